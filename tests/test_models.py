"""Backbones with nonlocal blocks (models/): positions, sizes, forward/backward, and weight loading.

Parameter counts are pinned in tests/model_complexity.json. After an intended change to a backbone or a block,
regenerate it with
    python tests/test_models.py
and review the diff. Structure and counts are checked on the meta device (no memory, no init cost), so every
backbone / arch / nl_type combination is built; forward passes use the small ones (batch 2, CIFAR 32x32,
ResNet-50 at 64x64).
"""
import io
import json
import os
import socket
import sys
import urllib.error
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # lets `python tests/test_models.py` regenerate the JSON
    sys.path.insert(0, ROOT)

from lib import NONLOCAL_BLOCKS  # noqa: E402
from lib.errors import ConfigError  # noqa: E402
from models import BACKBONES, build_model, classifier_size, load_state_dict_checked  # noqa: E402
from models.preresnet import PreActBasicBlock, PreActBottleneck  # noqa: E402
from models.resnet import Bottleneck  # noqa: E402

COMPLEXITY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_complexity.json")
NUM_CLASSES = {"preresnet": 10, "resnet": 1000}

# Where the blocks must be, written out by hand from docs/classification.md "Models" and docs/blocks.md section 4
# (not computed by the code under test).
EXPECTED_PATHS = {
    ("preresnet", 20, 1): ("layer1.2",), ("preresnet", 56, 1): ("layer1.2",), ("preresnet", 110, 1): ("layer1.2",),
    ("resnet", 50, 1): ("layer3.5",),
    ("resnet", 50, 5): ("layer3.1", "layer3.4", "layer3.7", "layer4.1", "layer4.4"),
    ("resnet", 101, 1): ("layer3.22",),
    ("resnet", 101, 5): ("layer3.1", "layer3.9", "layer3.18", "layer4.1", "layer4.4"),
    ("resnet", 152, 1): ("layer3.35",),
    ("resnet", 152, 5): ("layer3.1", "layer3.14", "layer3.27", "layer4.1", "layer4.4"),
}
# Width C of the stage outputs the blocks see.
STAGE_WIDTH = {("preresnet", 20): {"layer1": 16, "layer2": 32, "layer3": 64},
               ("preresnet", 56): {"layer1": 64, "layer2": 128, "layer3": 256},
               ("preresnet", 110): {"layer1": 64, "layer2": 128, "layer3": 256},
               ("resnet", 50): {"layer3": 1024, "layer4": 2048}}
for _depth in (101, 152):
    STAGE_WIDTH[("resnet", _depth)] = STAGE_WIDTH[("resnet", 50)]
RESIDUAL_BLOCKS_PER_STAGE = {20: (3, 3, 3), 56: (9, 9, 9), 110: (18, 18, 18),
                             50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def all_configs():
    """(backbone, arch, nl_type, nl_nums) for every registered backbone, arch and block, plus the plain nets."""
    configs = []
    for backbone, cls in BACKBONES.items():
        for arch in cls.ARCHS:
            configs.append((backbone, arch, None, 0))
            for nl_type in NONLOCAL_BLOCKS:
                configs += [(backbone, arch, nl_type, n) for n in cls.NL_NUMS if n > 0]
    return configs


def config_id(config):
    backbone, arch, nl_type, nl_nums = config
    return f"{backbone}{arch}-{nl_type or 'plain'}-n{nl_nums}"


def build_on_meta(backbone, arch, nl_type, nl_nums):
    # Meta tensors hold no values, so random init does nothing there, yet it costs about 0.4 s per ResNet:
    # skip it.
    with torch.device("meta"), mock.patch.object(nn.init, "kaiming_normal_", lambda tensor, **_: tensor):
        return build_model(backbone, arch, NUM_CLASSES[backbone], nl_type=nl_type, nl_nums=nl_nums)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_norms(model, seed=0):
    """Random BN/GN affine and running stats, so that eval-mode comparisons would catch misplaced weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                size = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
    return model


@pytest.fixture(scope="module")
def pinned_counts():
    with open(COMPLEXITY_FILE) as f:
        return json.load(f)


@pytest.mark.parametrize("config", all_configs(), ids=config_id)
def test_blocks_sit_at_reference_positions_and_size_is_pinned(config, pinned_counts):
    backbone, arch, nl_type, nl_nums = config
    model = build_on_meta(*config)
    assert count_params(model) == pinned_counts[config_id(config)]
    expected = EXPECTED_PATHS[(backbone, arch, nl_nums)] if nl_type else ()
    assert model.nonlocal_paths == expected
    residual_counts = []
    for stage in (name for name, _ in model.named_children() if name.startswith("layer")):
        residual_counts.append(0)
        for index, module in enumerate(getattr(model, stage)):
            path = f"{stage}.{index}"
            if path in expected:
                assert isinstance(module, NONLOCAL_BLOCKS[nl_type]), path
                width = STAGE_WIDTH[(backbone, arch)][stage]
                convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
                assert max(c.in_channels for c in convs) == width
                assert any(c.in_channels == width and c.out_channels == width // 2 for c in convs)  # C' = C/div
            else:
                assert isinstance(module, (PreActBasicBlock, PreActBottleneck, Bottleneck)), path
                residual_counts[-1] += 1
    assert tuple(residual_counts) == RESIDUAL_BLOCKS_PER_STAGE[arch]


def test_plain_resnet_has_torchvision_size():
    with torch.device("meta"):
        ours = {depth: count_params(build_model("resnet", depth, 1000)) for depth in (50, 101, 152)}
        theirs = {depth: count_params(getattr(torchvision.models, f"resnet{depth}")()) for depth in (50, 101, 152)}
    assert ours == theirs


def test_preresnet_stages_and_flags():
    model = build_model("preresnet", "56", 100, nl_type="nl", nl_layer=["1", 3], is_sys=True, is_norm=True)
    assert model.nonlocal_paths == ("layer1.2", "layer3.2")
    assert model.layer3[2].is_sys and model.layer3[2].is_norm  # honoured, unlike the reference
    assert not build_model("preresnet", 20, 10, nl_type="nl").layer1[2].is_norm  # None = the block's default
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("nl_type", list(NONLOCAL_BLOCKS))
def test_preresnet_forward_backward_reaches_all_parameters(nl_type):
    torch.manual_seed(0)
    model = build_model("preresnet", 20, 10, nl_type=nl_type)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    # cc's convs sit behind gamma = 0, so their first gradient is exactly zero; it still has to exist.
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert nl_type == "cc" and "_conv" in name or param.grad.abs().sum() > 0, name


def test_resnet_forward_backward():
    model = build_model("resnet", 50, 7, nl_type="snl", nl_nums=5)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("nl_type", list(NONLOCAL_BLOCKS))
def test_resnet_blocks_start_as_identity(nl_type):
    model = build_model("resnet", 50, 10, nl_type=nl_type, nl_nums=1).eval()
    block = model.layer3[5]
    x = torch.randn(2, 1024, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.std() > 0 for c in convs)  # only the norms are zero: the block can still learn


def test_build_args_rebuild_the_same_model():
    model = build_model("preresnet", "20", 10, nl_type="snl", nl_layer=("2",), stage_num=2, div=4,
                        is_sys=True, is_norm=True)
    buffer = io.BytesIO()
    torch.save({"build_args": model.build_args}, buffer)  # checkpoints must hold them under weights_only
    buffer.seek(0)
    args = torch.load(buffer, weights_only=True)["build_args"]
    rebuilt = build_model(**args)
    assert rebuilt.nonlocal_paths == ("layer2.2",) and args["arch"] == 20
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert build_model("preresnet", 20, 10, nl_type="snl", nl_nums=0).build_args["nl_type"] is None


def reference_layout(state_dict, data_parallel):
    """A state_dict as the reference's train_val.py saves a CIFAR PreResNet (docs/deviations.md, item 5): the model's
    entries, then the unused conv1 (3 -> 64, 3x3) and fc (2048 -> num_classes) it bolts on (its maxpool is an
    empty Sequential: no entries); under DataParallel every key starts with "module."."""
    layout = dict(state_dict)
    layout["conv1.weight"] = torch.randn(64, 3, 3, 3)
    layout["fc.weight"], layout["fc.bias"] = torch.randn(10, 2048), torch.randn(10)
    return {("module." + k if data_parallel else k): v for k, v in layout.items()}


@pytest.mark.parametrize("data_parallel", [False, True], ids=["single", "dataparallel"])
def test_reference_checkpoint_loads_and_gives_same_logits(data_parallel, capsys):
    torch.manual_seed(0)
    source = randomize_norms(build_model("preresnet", 20, 1000, nl_type="snl", is_sys=True, is_norm=True)).eval()
    checkpoint = reference_layout(source.state_dict(), data_parallel)
    assert classifier_size(checkpoint) == 1000  # the used fc2, not the unused 10-way fc
    model = build_model("preresnet", 20, classifier_size(checkpoint), nl_type="snl", is_sys=True, is_norm=True)
    load_state_dict_checked(model, checkpoint)
    notice = capsys.readouterr().out
    assert all(name in notice for name in ("conv1.weight", "fc.weight", "fc.bias"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))


def test_checkpoint_of_another_model_is_refused():
    preresnet20 = build_model("preresnet", 20, 10).state_dict()
    with pytest.raises(ConfigError, match="missing keys.*shape mismatches"):
        load_state_dict_checked(build_model("preresnet", 56, 10), preresnet20)
    snl20 = build_model("preresnet", 20, 10, nl_type="snl").state_dict()
    with pytest.raises(ConfigError, match=r"unexpected keys \(layer1.2.t.weight"):
        load_state_dict_checked(build_model("preresnet", 20, 10), snl20)
    thousand_way = build_model("preresnet", 20, 1000).state_dict()
    with pytest.raises(ConfigError, match="fc2.weight.*its classifier has 1000 classes"):
        load_state_dict_checked(build_model("preresnet", 20, 10), thousand_way)
    with pytest.raises(ConfigError, match="no classifier"):
        classifier_size({"conv.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory):
    """A random-init torchvision ResNet-50 (random norm stats too), its state_dict file, an input, its logits."""
    torch.manual_seed(0)
    reference = randomize_norms(torchvision.models.resnet50(weights=None)).eval()
    path = str(tmp_path_factory.mktemp("weights") / "resnet50.pth")
    torch.save(reference.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return path, reference.state_dict(), x, reference(x)


@pytest.mark.parametrize("nl_type,nl_nums", [("snl", 1), ("cgnl", 5)])
def test_torchvision_weights_give_torchvision_logits(torchvision_resnet50, nl_type, nl_nums):
    path, _, x, expected = torchvision_resnet50
    model = build_model("resnet", 50, 1000, nl_type=nl_type, nl_nums=nl_nums, pretrained=path).eval()
    assert len(model.nonlocal_paths) == nl_nums
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_torchvision_classifier_skipped_for_other_class_count(torchvision_resnet50, capsys):
    path, weights, _, _ = torchvision_resnet50
    model = build_model("resnet", 50, 10, nl_type="snl", nl_nums=1, pretrained=path)
    assert "1000 classes" in capsys.readouterr().out
    assert model.fc.weight.shape == (10, 2048)
    assert torch.equal(model.layer3[6].conv1.weight, weights["layer3.5.conv1.weight"])  # shifted past the block
    assert torch.equal(model.layer4[2].bn3.running_var, weights["layer4.2.bn3.running_var"])


def test_non_torchvision_pretrained_file_is_refused(torchvision_resnet50, tmp_path):
    path = str(tmp_path / "preresnet.pth")
    torch.save(build_model("preresnet", 20, 10).state_dict(), path)
    with pytest.raises(ConfigError, match="not a torchvision ResNet-50 state_dict"):
        build_model("resnet", 50, 10, pretrained=path)
    deeper = dict(torchvision_resnet50[1], **{"layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)})
    torch.save(deeper, path)  # a 7th layer3 block, as in ResNet-101 weights
    with pytest.raises(ConfigError, match="layer3.6.conv1.weight is beyond the 6 residual blocks of layer3"):
        build_model("resnet", 50, 10, nl_type="snl", pretrained=path)
    with pytest.raises(ConfigError, match="not found"):
        build_model("resnet", 50, 10, pretrained=tmp_path / "missing.pth")


def test_pretrained_download_offline_gives_one_line_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(ConfigError) as error:
        build_model("resnet", 50, 1000, nl_type="snl", pretrained=True)
    message = str(error.value)
    assert "could not download" in message and "local path" in message and "\n" not in message


@pytest.mark.parametrize("kwargs,valid", [
    (dict(backbone="vgg", arch=16), "preresnet, resnet"),
    (dict(backbone="preresnet", arch=50), "20, 56, 110"),
    (dict(backbone="resnet", arch="fifty"), "50, 101, 152"),
    (dict(backbone="resnet", arch=50, nl_type="gcnet"), "snl, nl, a2, ns, dnl, cgnl, cc"),
    (dict(backbone="preresnet", arch=20, nl_type="snl", nl_nums=5), "valid: 0, 1"),
    (dict(backbone="preresnet", arch=20, nl_type="snl", nl_layer="4"), "valid: 1, 2, 3"),
    (dict(backbone="resnet", arch=50, nl_type="snl", nl_layer=("3",)), "preresnet only"),
    (dict(backbone="preresnet", arch=20, pretrained=True), "no pretrained weights"),
    (dict(backbone="preresnet", arch=20, nl_type="snl", div=32), "no inner channels"),
], ids=lambda value: str(value) if isinstance(value, str) else None)
def test_bad_arguments_raise_config_error_listing_valid_values(kwargs, valid):
    with pytest.raises(ConfigError, match=valid):
        build_model(num_classes=10, **kwargs)


def regenerate_complexity_file():
    counts = {config_id(config): count_params(build_on_meta(*config)) for config in all_configs()}
    with open(COMPLEXITY_FILE, "w") as f:
        json.dump(counts, f, indent=1)
        f.write("\n")
    print(f"wrote {len(counts)} parameter counts to {COMPLEXITY_FILE}")


if __name__ == "__main__":
    regenerate_complexity_file()
