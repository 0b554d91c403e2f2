"""Re-ID networks: BNNeck / GeM / last stride, block placement, identity start, video volumes, weights."""
from urllib.error import URLError

import pytest
import torch
import torchvision

from lib.errors import ConfigError
from models import build_model, reid
from models.weights import load_shifted_state_dict

SIZE = (64, 32)


def small(**kwargs):
    torch.manual_seed(0)
    return build_model(kwargs.pop("backbone", "reid"), kwargs.pop("arch", 18), num_classes=kwargs.pop("classes", 5),
                       **kwargs)


@pytest.mark.parametrize("last_stride,map_size", [(1, (4, 2)), (2, (2, 1))])
def test_last_stride_and_bnneck(last_stride, map_size):
    model = small(last_stride=last_stride)
    x = torch.randn(3, 3, *SIZE)
    assert model.trunk(x).shape == (3, 512, *map_size)
    logits, feature = model(x)
    assert logits.shape == (3, 5) and feature.shape == (3, 512)
    assert not model.neck.bn.bias.requires_grad and model.neck.classifier.bias is None
    model.eval()
    pooled = model.pool(model.trunk(x))
    assert torch.allclose(model(x), model.neck.bn(pooled), atol=1e-6)  # eval: the post-BN feature
    assert not torch.allclose(model(x), pooled, atol=1e-3)


def test_gem():
    model = small(pooling="gem")
    assert isinstance(model.pool, reid.GeM) and model.pool.p.item() == 3 and model.pool.p.requires_grad
    x = torch.rand(2, 4, 3, 5) + 0.1
    assert torch.allclose(model.pool(x), x.pow(3).mean((2, 3)).pow(1 / 3), atol=1e-6)
    model.pool.p.data.fill_(1.0)
    assert torch.allclose(model.pool(x), x.mean((2, 3)), atol=1e-6)


@pytest.mark.parametrize("arch,nl_nums,paths", [
    (18, 1, ["trunk.layer3.1"]),
    (18, 5, ["trunk.layer2.1", "trunk.layer2.3", "trunk.layer3.1", "trunk.layer3.3"]),
    (50, 1, ["trunk.layer3.5"]),
    (50, 5, ["trunk.layer2.3", "trunk.layer2.5", "trunk.layer3.4", "trunk.layer3.6", "trunk.layer3.8"]),
])
def test_placement(arch, nl_nums, paths):
    model = build_model("reid", arch, num_classes=3, nl_type="nl", nl_nums=nl_nums, device="meta")
    assert list(model.nonlocal_paths) == paths
    for path in paths:  # inner width C / 2, never 1 (the AGW bug)
        block = model.get_submodule(path)
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        channels = convs[0].in_channels
        assert type(block).__name__ == "NL" and convs[0].out_channels == channels // 2 > 1


@pytest.mark.parametrize("nl_type", ["snl", "nl"])
def test_blocks_start_as_identity(nl_type):
    plain = small()
    with_blocks = small(nl_type=nl_type, nl_nums=5)
    load_shifted_state_dict(with_blocks.trunk, plain.trunk.state_dict(), "the plain trunk")
    with_blocks.neck.load_state_dict(plain.neck.state_dict())
    x = torch.randn(2, 3, *SIZE)
    plain.eval(), with_blocks.eval()
    assert torch.allclose(plain(x), with_blocks(x), atol=1e-5)


def test_video_volume_blocks_see_the_clip():
    model = small(backbone="reid_video", nl_type="snl", nl_nums=1, temporal="attention")
    block = model.get_submodule(model.nonlocal_paths[0])
    seen = []
    block.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    logits, feature = model(torch.randn(2, 4, 3, *SIZE))
    assert logits.shape == (2, 5) and feature.shape == (2, 512)
    assert seen == [torch.Size([2, 256, 4, 4, 2])]  # (B, C, T, H, W): one space-time volume per clip
    # The frames interact only through the block: at its identity start, changing frame 3 leaves frame 0's map
    # alone; once its output norm is non-zero, frame 0 sees frame 3.
    model.eval()
    trunk = model.trunk
    trunk.frames = 4
    x = torch.randn(4, 3, *SIZE)
    y = x.clone()
    y[3] += 1
    assert torch.allclose(trunk(x)[0], trunk(y)[0])
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.weight.data.fill_(1.0)
    assert not torch.allclose(trunk(x)[0], trunk(y)[0])


def test_video_pooling_and_3d_trunk():
    clips = torch.randn(2, 3, 3, *SIZE)
    tp = small(backbone="reid_video")
    tp.eval()
    frames = tp.pool(tp.trunk(clips.flatten(0, 1))).view(2, 3, -1)
    assert torch.allclose(tp(clips), tp.neck.bn(frames.mean(1)), atol=1e-5)
    many = torch.randn(5, 3, 3, *SIZE)
    assert torch.allclose(reid.tracklet_feature(tp, many, chunk=2), tp(many).mean(0), atol=1e-5)
    model = small(backbone="reid_video", trunk="resnet3d", nl_type="snl", nl_nums=1)
    logits, feature = model(clips)
    assert logits.shape == (2, 5) and feature.shape == (2, 512)
    with pytest.raises(ConfigError, match="apply to backbone 'reid_video' only"):
        small(temporal="attention")


def test_build_args_round_trip_and_errors():
    model = small(nl_type="snl", nl_nums=1, pooling="gem", last_stride=2)
    again = build_model(**model.build_args)
    assert again.build_args == model.build_args
    assert [k for k, _ in again.named_parameters()] == [k for k, _ in model.named_parameters()]
    with pytest.raises(ConfigError, match="pooling"):
        small(pooling="max")
    with pytest.raises(ConfigError, match="apply to the re-ID backbones"):
        build_model("resnet", 50, num_classes=3, pooling="gem")
    with pytest.raises(ConfigError, match="unknown re-ID model option.s. pool"):
        small(pool="gem")
    with pytest.raises(ConfigError, match="unknown arch"):
        small(arch=152)


def test_pretrained_from_file_and_offline(tmp_path, monkeypatch):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = small(nl_type="snl", nl_nums=5, last_stride=2, pretrained=str(path))
    reference.eval(), model.eval()
    x = torch.randn(1, 3, *SIZE)
    expected = torch.nn.Sequential(*list(reference.children())[:-2])(x)
    assert torch.allclose(model.trunk(x), expected, atol=1e-5)

    class Offline:
        url = "https://download.pytorch.org/models/resnet18.pth"

        def get_state_dict(self, **kwargs):
            raise URLError("no network")
    monkeypatch.setattr(reid, "_torchvision_weights", lambda depth: Offline())
    with pytest.raises(ConfigError, match="could not download torchvision's ResNet-18 ImageNet weights"):
        small(pretrained=True)
