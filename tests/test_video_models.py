"""Video: the blocks' output_relu option, the 3-D backbones of models/video.py, their weights, and fine-tuning.

Every numerical check is against formulas written here or in tests/direct_formulas.py, in float64.
"""
import math
import socket
import urllib.error
from unittest import mock

import direct_formulas as direct
import pytest
import torch
import torchvision
from torch import nn

from lib import NONLOCAL_BLOCKS, build_nonlocal
from lib.errors import ConfigError
from lib.registry import stage_based
from models import build_model
from models.video import VIDEO_ARCHS, VIDEO_BACKBONES, fine_tuning_parameters
from tools._checks import randomized

STAGE_KINDS = [kind for kind in NONLOCAL_BLOCKS if stage_based(kind)]


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("output_relu", [None, True, False])
@pytest.mark.parametrize("kind", STAGE_KINDS)
def test_output_relu_matches_the_direct_formula_in_3d(kind, output_relu, train):
    """Y = X + relu(BN(pre)) or X + BN(pre), forward and backward, on a (B, C, T, H, W) input with N = 40 >= 4 C'
    (the fused one-unit path where it applies), with batch statistics (train) and running ones (eval)."""
    torch.manual_seed(0)
    block = randomized(build_nonlocal(kind, 16, 8, dim=3, output_relu=output_relu)).double().train(train)
    reference = randomized(build_nonlocal(kind, 16, 8, dim=3, output_relu=output_relu)).double().train(train)
    reference.load_state_dict(block.state_dict())
    expected_relu = kind != "gsnl" if output_relu is None else output_relu
    assert block.output_relu is expected_relu and all(u.output_relu is expected_relu for u in block.stages)
    x = torch.randn(2, 16, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = block(x), direct.stage_forward(reference, x_ref, kind, output_relu=output_relu)
    assert rel_err(y, y_ref) < 1e-10
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-10
    for (name, p), p_ref in zip(block.named_parameters(), reference.parameters()):
        assert rel_err(p.grad, p_ref.grad) < 1e-10, name


def test_output_relu_false_differs_and_keeps_the_fused_path():
    """Without the ReLU the output has negative residuals (so the option is not ignored); the one-unit SNL stage
    still runs fused (its correctness with and without the ReLU: the direct-formula test above)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 5, dtype=torch.float64)
    with_relu = randomized(build_nonlocal("snl", 16, 8, dim=3)).double().eval()
    without = randomized(build_nonlocal("snl", 16, 8, dim=3, output_relu=False)).double().eval()
    assert with_relu._fusable(x) and without._fusable(x)
    with torch.no_grad():
        assert (with_relu(x) - x).min() >= 0 and (without(x) - x).min() < 0
    assert "output_relu=False" in repr(without) and "output_relu" not in repr(with_relu)


@pytest.mark.parametrize("kind", ["cgnl", "cc"])
def test_output_relu_is_refused_for_blocks_without_a_stage(kind):
    with pytest.raises(ConfigError, match=f"output_relu applies to the stage-based blocks only, not to '{kind}'"):
        build_nonlocal(kind, 16, 8, output_relu=False)
    with pytest.raises(ConfigError, match="output_relu must be True, False or None"):
        build_nonlocal("snl", 16, 8, output_relu="False")


# ---------------------------------------------------------------------------------------------------------------
# The earlier release's I3D-SNL network, restated from its description (docs/blocks.md): the 3D-ResNets ResNet-50
# with a space-time SNL stage at layer3[5]. Its stage: t, p 1x1x1; A = softmax over the last axis of theta^T phi
# (no scale, no symmetry, no normalization); units Y = X + BN(W1 Z + W2 A Z), Z = g(X), no output ReLU. The gSNL
# unit adds W3 (2 A Z - Z). Written with plain modules and explicit formulas, sharing nothing with lib/ or models/.
# ---------------------------------------------------------------------------------------------------------------
class StSNLUnit(nn.Module):
    def __init__(self, inplanes, planes, gsnl=False):
        super().__init__()
        self.g = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.w_1 = nn.Conv3d(planes, inplanes, 1, bias=False)
        self.w_2 = nn.Conv3d(planes, inplanes, 1, bias=False)
        if gsnl:
            self.w_3 = nn.Conv3d(planes, inplanes, 1, bias=False)
        self.bn = nn.BatchNorm3d(inplanes)
        self.gsnl = gsnl

    def forward(self, x, att):  # att (B, N, N)
        z = self.g(x)
        b, c = z.shape[:2]
        az = torch.bmm(att, z.reshape(b, c, -1).transpose(1, 2)).transpose(1, 2).reshape(z.shape)
        pre = self.w_1(z) + self.w_2(az)
        if self.gsnl:
            pre = pre + self.w_3(2 * az - z)
        return x + self.bn(pre)


class StSNLStage(nn.Module):
    def __init__(self, inplanes, planes, stage_num=1, gsnl=False):
        super().__init__()
        self.t = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.p = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.stages = nn.Sequential(*[StSNLUnit(inplanes, planes, gsnl) for _ in range(stage_num)])

    def forward(self, x):
        b = x.shape[0]
        theta = self.t(x).reshape(b, self.t.out_channels, -1)  # (B, C', N)
        phi = self.p(x).reshape(b, self.p.out_channels, -1)
        att = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)
        for unit in self.stages:
            x = unit(x, att)
        return x


class HaraBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class NonlocalNet(nn.Module):
    """ResNet-50 3-D with one StSNLStage inserted at layer3 index 5; AvgPool3d over (ceil(T/16), ceil(S/32)^2)."""

    def __init__(self, num_classes, sample_size, sample_duration):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        inplanes, layers = 64, []
        for planes, stride, count in zip((64, 128, 256, 512), (1, 2, 2, 2), (3, 4, 6, 3)):
            downsample = nn.Sequential(nn.Conv3d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm3d(planes * 4))
            blocks = [HaraBottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            blocks += [HaraBottleneck(inplanes, planes) for _ in range(1, count)]
            layers.append(blocks)
        layers[2].insert(5, StSNLStage(1024, 512))
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*blocks) for blocks in layers)
        self.avgpool = nn.AvgPool3d((math.ceil(sample_duration / 16), math.ceil(sample_size / 32),
                                     math.ceil(sample_size / 32)), stride=1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def test_earlier_release_i3d_snl_network_loads_and_gives_the_same_logits():
    torch.manual_seed(0)
    ours = randomized(build_model("resnet3d", "50", 7, nl_type="snl", is_sys=False, is_norm=False,
                                  output_relu=False)).double().eval()  # randomized: the block's BN is not 0
    assert ours.nonlocal_paths == ("layer3.5",)
    theirs = NonlocalNet(7, sample_size=32, sample_duration=8).double().eval()
    theirs.load_state_dict(ours.state_dict())  # strict: the same keys and shapes
    assert set(theirs.state_dict()) == set(ours.state_dict())
    x = torch.randn(1, 3, 8, 32, 32, dtype=torch.float64)  # layer3 at 1 x 2 x 2: N = 4
    with torch.no_grad():
        expected = theirs(x)
        assert rel_err(ours(x), expected) < 1e-10
        ours.layer3[5].stages[0].bn.weight.mul_(2)  # the block takes part: changing it changes the logits
        assert rel_err(ours(x), expected) > 1e-6


@pytest.mark.parametrize("stage_num", [1, 2])
def test_earlier_release_st_gsnl_stage_loads_into_gsnl_dim3(stage_num):
    torch.manual_seed(0)
    theirs = randomized(StSNLStage(16, 8, stage_num=stage_num, gsnl=True)).double().eval()
    ours = build_nonlocal("gsnl", 16, 8, stage_num=stage_num, dim=3).double().eval()
    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(2, 16, 3, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < 1e-10


# ---------------------------------------------------------------------------------------------------------------
# Backbones: shapes, block placement, arguments.
# ---------------------------------------------------------------------------------------------------------------
VIDEO_BLOCKS = [kind for kind in NONLOCAL_BLOCKS if kind != "cc"]  # cc is 2-D only
TINY_CLIP = (2, 3, 4, 32, 32)  # (B, 3, T, H, W)


@pytest.mark.parametrize("backbone", VIDEO_BACKBONES)
def test_every_video_backbone_with_every_dim3_block_gives_logits(backbone):
    """(B, 3, T, H, W) -> (B, num_classes) with each block (dim 3) after layer2's first residual block, in eval and
    train mode, on the meta device (shapes only: building 40 models for real would take a minute; the tests below
    run every backbone on real numbers, and the placement tests every position)."""
    for kind in VIDEO_BLOCKS:
        for layer in ("2",):
            with torch.device("meta"), mock.patch.object(nn.init, "kaiming_normal_", lambda tensor, **_: tensor):
                model = build_model(backbone, 18, 5, nl_type=kind, nl_layer=layer)
                for path in model.nonlocal_paths:
                    block = model.get_submodule(path)
                    assert isinstance(block, NONLOCAL_BLOCKS[kind]) and getattr(block, "dim", 3) == 3
                assert model.eval()(torch.empty(*TINY_CLIP)).shape == (2, 5), (kind, layer)
                assert model.train()(torch.empty(*TINY_CLIP)).shape == (2, 5), (kind, layer)


@pytest.mark.parametrize("output_relu", [None, True])
def test_video_blocks_learn(output_relu):
    """Default (None -> no output ReLU): the block starts as the identity and its output BN gets a gradient.
    Explicit output ReLU: its BN starts at weight 1 (a zero one would leave the block without any gradient), so
    every parameter of the block gets one."""
    torch.manual_seed(0)
    model = build_model("r3d", 18, 5, nl_type="snl", nl_layer=2, output_relu=output_relu)
    block = model.layer2[1]
    assert block.output_relu is bool(output_relu) and model.build_args["output_relu"] is bool(output_relu)
    torch.nn.functional.cross_entropy(model(torch.randn(*TINY_CLIP)), torch.tensor([1, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())
    learning = block.parameters() if output_relu else block.stages[0].bn.parameters()
    assert all(p.grad.abs().sum() > 0 for p in learning)


@pytest.mark.parametrize("backbone", VIDEO_BACKBONES)
def test_blocks_start_as_the_identity(backbone):
    """The model with a block gives the logits of the same model without it (real numbers, eval mode)."""
    torch.manual_seed(0)
    model = build_model(backbone, 18, 5, nl_type="nl", nl_layer=2).eval()
    block = model.layer2[1]
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and all(not m.weight.any() and not m.bias.any() for m in norms)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        with_block = model(x)
        del model.layer2[1]
        assert with_block.shape == (1, 5) and torch.equal(model(x), with_block)


# Written out by hand (docs/classification.md, "Models"): nl_nums 1 = layer3 before its last residual block,
# nl_nums 5 = after
# layer3's blocks floor(k n / 3), k = 0, 1, 2, and layer4's first and last; nl_layer 2 = after layer2's first.
EXPECTED_VIDEO_PATHS = {
    ("resnet3d", 18, 1, "1"): ("layer3.1",), ("resnet3d", 34, 1, "1"): ("layer3.5",),
    ("resnet3d", 50, 1, "1"): ("layer3.5",), ("resnet3d", 101, 1, "1"): ("layer3.22",),
    ("resnet3d", 50, 5, "1"): ("layer3.1", "layer3.4", "layer3.7", "layer4.1", "layer4.4"),
    ("resnet3d", 101, 5, "1"): ("layer3.1", "layer3.9", "layer3.18", "layer4.1", "layer4.4"),
    ("resnet3d", 50, 1, "2"): ("layer2.1",), ("resnet3d", 50, 1, "3"): ("layer3.5",),
    ("r3d", 18, 1, "1"): ("layer3.1",), ("mc3", 18, 1, "2"): ("layer2.1",), ("r2plus1d", 18, 1, "1"): ("layer3.1",),
}
RESIDUAL_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
OUTPUT_WIDTHS = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048),
                 101: (256, 512, 1024, 2048)}


@pytest.mark.parametrize("config", list(EXPECTED_VIDEO_PATHS), ids=lambda c: "-".join(map(str, c)))
def test_blocks_sit_where_documented(config):
    backbone, arch, nl_nums, layer = config
    with torch.device("meta"):
        model = build_model(backbone, arch, 10, nl_type="snl", nl_nums=nl_nums, nl_layer=layer)
    assert model.nonlocal_paths == EXPECTED_VIDEO_PATHS[config]
    assert model.build_args["nl_layer"] == [2 if layer == "2" else 1]
    for stage in range(1, 5):
        layer_modules = getattr(model, f"layer{stage}")
        blocks = [m for m in layer_modules if isinstance(m, NONLOCAL_BLOCKS["snl"])]
        assert len(layer_modules) - len(blocks) == RESIDUAL_BLOCKS[arch][stage - 1]
        for block in blocks:
            assert block.t.in_channels == OUTPUT_WIDTHS[arch][stage - 1] == 2 * block.t.out_channels
            assert isinstance(block.t, nn.Conv3d)


def test_every_video_backbone_of_the_task_registry_is_built():
    assert set(VIDEO_ARCHS) == set(VIDEO_BACKBONES)


def test_plain_torchvision_backbones_are_torchvision_models():
    for backbone, builder in (("r3d", "r3d_18"), ("mc3", "mc3_18"), ("r2plus1d", "r2plus1d_18")):
        with torch.device("meta"):
            ours = build_model(backbone, 18, 400).state_dict()
            theirs = getattr(torchvision.models.video, builder)().state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_build_args_rebuild_the_video_model():
    model = build_model("resnet3d", "18", 5, nl_type="gsnl", nl_layer="2", output_relu=True, shortcut_type="A")
    args = model.build_args
    assert (args["arch"], args["nl_layer"], args["output_relu"], args["shortcut_type"]) == (18, [2], True, "A")
    assert model.layer2[1].output_relu is True and model.layer2[1].stages[0].bn.weight.eq(1).all()
    assert not any(k.endswith("downsample.0.weight")
                                                           for k in model.state_dict())  # 'A': no parameters
    rebuilt = build_model(**args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_shortcut_a_subsamples_and_pads_with_zeros():
    model = build_model("resnet3d", 18, 5, shortcut_type="A")
    shortcut = model.layer2[0].downsample
    x = torch.randn(1, 64, 4, 6, 6)
    out = shortcut(x)
    assert out.shape == (1, 128, 2, 3, 3)
    assert torch.equal(out[:, :64], x[:, :, ::2, ::2, ::2]) and not out[:, 64:].any()


@pytest.mark.parametrize("kwargs,message", [
    (dict(backbone="r3d", arch=50), "valid: 18"),
    (dict(backbone="resnet3d", arch=152), "valid: 18, 34, 50, 101"),
    (dict(backbone="resnet3d", arch=18, nl_type="snl", nl_nums=5), "5 needs resnet3d 50 or 101"),
    (dict(backbone="r3d", arch=18, nl_type="snl", nl_nums=5), "valid: 0, 1"),
    (dict(backbone="resnet3d", arch=50, nl_type="snl", nl_nums=5, nl_layer="2"), "use nl_nums 1"),
    (dict(backbone="resnet3d", arch=50, nl_type="snl", nl_layer="4"), "nl_layer '4' is not supported"),
    (dict(backbone="resnet3d", arch=50, nl_type="snl", nl_layer=("2", "3")), "is not supported for video"),
    (dict(backbone="r3d", arch=18, nl_type="cc"), "cc block works on images only"),
    (dict(backbone="r3d", arch=18, nl_type="cgnl", output_relu=False), "stage-based blocks only"),
    (dict(backbone="resnet3d", arch=18, shortcut_type="C"), "shortcut_type must be 'A'"),
    (dict(backbone="mc3", arch=18, shortcut_type="A"), "resnet3d only"),
    (dict(backbone="resnet", arch=50, shortcut_type="B"), "video backbones only"),
    (dict(backbone="resnet", arch=50, nl_type="cgnl", output_relu=True), "stage-based blocks only"),
    (dict(backbone="resnet3d", arch=18, pretrained=True), "no downloadable weights.*resnet-18-kinetics.pth"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_video_arguments_raise_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_model(num_classes=10, **kwargs)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# Weights: 3D-ResNets checkpoints, torchvision files, downloads; fine-tuning.
# ---------------------------------------------------------------------------------------------------------------
def test_3d_resnets_checkpoint_loads_with_the_index_shift(tmp_path, capsys):
    """A checkpoint as the 3D-ResNets framework saves it (a dict with arch, epoch, state_dict under 'module.',
    optimizer), 400 Kinetics classes, into resnet3d-18 with a block in layer3 and layer2: same logits as the plain
    network when the classes agree; for another class count the fc is skipped with a notice."""
    torch.manual_seed(0)
    plain = randomized(build_model("resnet3d", 18, 400)).eval()
    checkpoint = {"epoch": 200, "arch": "resnet-18", "optimizer": {"state": {}, "param_groups": []},
                  "state_dict": {"module." + k: v for k, v in plain.state_dict().items()}}
    path = tmp_path / "resnet-18-kinetics.pth"
    torch.save(checkpoint, path)
    model = build_model("resnet3d", 18, 400, nl_type="snl", pretrained=str(path)).eval()
    assert torch.equal(model.layer3[2].conv2.weight, plain.layer3[1].conv2.weight)  # layer3.1 -> layer3.2
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    capsys.readouterr()
    ucf = build_model("resnet3d", 18, 101, nl_type="nl", nl_layer=2, pretrained=path)
    assert "400 classes" in capsys.readouterr().out and ucf.fc.out_features == 101
    assert torch.equal(ucf.layer2[2].bn1.running_var, plain.layer2[1].bn1.running_var)  # layer2.1 -> layer2.2
    with pytest.raises(ConfigError, match="not a 3D-ResNets resnet-34 checkpoint.*missing keys"):
        build_model("resnet3d", 34, 400, pretrained=path)


@pytest.mark.parametrize("backbone,builder", [("r3d", "r3d_18"), ("r2plus1d", "r2plus1d_18")])
def test_torchvision_format_file_gives_torchvision_logits(tmp_path, backbone, builder):
    torch.manual_seed(0)
    reference = randomized(getattr(torchvision.models.video, builder)(num_classes=400)).eval()
    path = tmp_path / f"{builder}.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(backbone, 18, 400, nl_type="snl", nl_layer=2, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    other, other_builder = ("mc3", "mc3_18") if backbone == "r3d" else ("r3d", "r3d_18")
    with pytest.raises(ConfigError, match=f"not a torchvision {other_builder} state_dict.*shape mismatches"):
        build_model(other, 18, 400, pretrained=str(path))


def test_kinetics_download_offline_gives_one_line_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.models.video.MC3_18_Weights, "get_state_dict", offline)
    with pytest.raises(ConfigError) as error:
        build_model("mc3", 18, 101, nl_type="snl", pretrained=True)
    message = str(error.value)
    assert "could not download" in message and "local path" in message and "\n" not in message


@pytest.mark.parametrize("ft_begin_index", [0, 3, 5])
def test_fine_tuning_parameters_freeze_what_they_should(ft_begin_index):
    """k = 0 trains everything; k = 3: layer3, layer4, fc and the block (here in layer2, among frozen residual
    blocks) train; k = 5: only fc and the block. Frozen: requires_grad False, no gradient, not in the optimizer,
    unchanged by a step."""
    torch.manual_seed(0)
    model = build_model("resnet3d", 18, 5, nl_type="snl", nl_layer=2)
    groups = fine_tuning_parameters(model, ft_begin_index)
    trained_prefixes = {0: ("",), 3: ("layer3.", "layer4.", "fc.", "layer2.1."), 5: ("fc.", "layer2.1.")}
    expected = {name for name, _ in model.named_parameters() if name.startswith(trained_prefixes[ft_begin_index])}
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for group in groups for p in group["params"]} == expected
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-3)
    torch.nn.functional.cross_entropy(model(torch.randn(*TINY_CLIP)), torch.tensor([0, 4])).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        trained = name in expected
        assert p.requires_grad is trained and (p.grad is not None) is trained, name
        assert torch.equal(p, before[name]) is not trained, name  # weight decay moves every trained one


def test_fine_tuning_index_is_checked():
    model = build_model("r3d", 18, 5)
    with pytest.raises(ConfigError, match="ft_begin_index must be 0"):
        fine_tuning_parameters(model, 6)
    assert len(fine_tuning_parameters(model, 1)[0]["params"]) == sum(
        1 for name, _ in model.named_parameters() if not name.startswith("stem."))
