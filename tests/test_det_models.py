"""Detection models (models/detection.py): torchvision weights load past the inserted blocks and give
torchvision's own detections, every 2-D block trains inside the frozen-BN backbone, every depth builds."""
import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from lib import NONLOCAL_BLOCKS
from lib.errors import ConfigError
from models import build_model
from models.detection import COCO_WEIGHTS, build_detector

SMALL = dict(min_size=64, max_size=96)
# Random heads score every class about equally, under torchvision's 0.05 cut: keep all detections to compare.
# A cheaper training step: fewer proposals and sampled RoIs (the default 2000 / 512 dominate at 64 px).
FAST_TRAIN = dict(SMALL, rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, box_batch_size_per_image=32)
KEEP_ALL = dict(SMALL, box_score_thresh=0.0, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)


def frozen_bn(module):
    """module with every BatchNorm2d swapped for torchvision's FrozenBatchNorm2d holding its statistics: what
    torchvision's builder does whenever it loads weights (with BN in eval mode the rounding differs slightly, and
    near-tied scores then reorder the detections)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            frozen_bn(child)
    return module


def images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 72, 64, generator=generator)]


def targets(with_masks=True):
    result = []
    for h, w, box, label in ((64, 80, [5.0, 8.0, 40.0, 50.0], 1), (72, 64, [10.0, 4.0, 60.0, 30.0], 2)):
        target = dict(boxes=torch.tensor([box]), labels=torch.tensor([label]))
        if with_masks:
            masks = torch.zeros(1, h, w, dtype=torch.uint8)
            masks[0, int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 1
            target["masks"] = masks
        result.append(target)
    return result


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """torchvision's own Mask R-CNN R50-FPN (random weights, random BN statistics) saved as a state_dict."""
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **KEEP_ALL)
    with torch.no_grad():  # non-trivial BN statistics, so that a misplaced or skipped one shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "maskrcnn_r50.pth"
    torch.save(model.state_dict(), path)
    return frozen_bn(model).eval(), str(path)


def test_shifted_weights_give_torchvision_detections(torchvision_file):
    reference, path = torchvision_file
    model = build_model("maskrcnn", "50", num_classes=91, nl_type="snl", nl_nums=1, pretrained=path, **KEEP_ALL)
    assert model.backbone.body.nonlocal_paths == ("layer3.5",)  # before layer3's last (6th) residual block
    assert model.backbone.body.layer3[6].conv1.weight.equal(reference.backbone.body.layer3[5].conv1.weight)
    model.eval()
    with torch.no_grad():
        ours, theirs = model(images()), reference(images())
    for mine, ref in zip(ours, theirs):
        assert len(ref["boxes"]) > 0
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.allclose(mine[key].float(), ref[key].float(), atol=1e-5), key


def test_without_blocks_keys_are_torchvision(torchvision_file):
    reference, path = torchvision_file
    model = build_detector("maskrcnn", 50, pretrained=path, **SMALL)
    tv_keys = {k for k in reference.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(model.state_dict()) == tv_keys


def test_other_class_count_remakes_predictors_only(torchvision_file, capsys):
    reference, path = torchvision_file
    model = build_detector("maskrcnn", 50, num_classes=4, nl_type="nl", nl_nums=5, pretrained=path, **SMALL)
    assert "keeping fresh predictors" in capsys.readouterr().out
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert model.roi_heads.box_head.fc6.weight.equal(reference.roi_heads.box_head.fc6.weight)
    assert model.roi_heads.mask_predictor.conv5_mask.weight.equal(reference.roi_heads.mask_predictor.conv5_mask.weight)
    # nl_nums 5 on ResNet-50: layer3 after its blocks 0, 2, 4 and layer4 after 0 and 2, keys shifted past them
    assert model.backbone.body.nonlocal_paths == ("layer3.1", "layer3.4", "layer3.7", "layer4.1", "layer4.4")
    assert model.backbone.body.layer4[3].conv3.weight.equal(reference.backbone.body.layer4[2].conv3.weight)


def test_wrong_file_and_offline_download_are_one_line_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.pth"
    torch.save({"backbone.body.layer9.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not a torchvision maskrcnn ResNet-50-FPN state_dict"):
        build_detector("maskrcnn", 50, pretrained=str(bad), **SMALL)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(COCO_WEIGHTS["maskrcnn"]), "get_state_dict", offline)
    with pytest.raises(ConfigError) as error:
        build_detector("maskrcnn", 50, pretrained=True, **SMALL)
    message = str(error.value)
    assert "\n" not in message and COCO_WEIGHTS["maskrcnn"].url in message and "checkpoints" in message
    with pytest.raises(ConfigError, match="ResNet-50 only"):
        build_detector("fasterrcnn", 18, pretrained=True)


def test_frozen_backbone_bn_and_trainable_blocks():
    model = build_detector("fasterrcnn", 18, num_classes=3, nl_type="snl", nl_nums=1, trainable_backbone_layers=1,
                           frozen_bn=True, **SMALL)
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer3[0].bn1, FrozenBatchNorm2d)
    assert not body.layer3[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    block = body.get_submodule(body.nonlocal_paths[0])
    assert all(p.requires_grad for p in block.parameters())  # in a frozen stage, still trainable
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())  # its own, learnable norm
    # torchvision's rule: frozen with trained weights only; from scratch BatchNorm2d, recorded for rebuilding
    scratch = build_detector("fasterrcnn", 18, num_classes=3, **SMALL)
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d) and not scratch.build_args["frozen_bn"]
    assert isinstance(build_model(**dict(scratch.build_args, frozen_bn=True)).backbone.body.bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize("nl_type", sorted(NONLOCAL_BLOCKS))
def test_every_block_trains_one_step_in_resnet18(nl_type):
    torch.manual_seed(0)
    model = build_model("maskrcnn", 18, num_classes=3, nl_type=nl_type, nl_nums=1, **FAST_TRAIN)
    body = model.backbone.body
    block = body.get_submodule(body.nonlocal_paths[0])
    probe = torch.rand(1, 256, 4, 5)
    assert torch.equal(block.eval()(probe), probe)  # starts as the identity
    model.train()
    losses = model(images(), targets())
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    optimizer.step()
    assert not torch.equal(block.eval()(probe), probe)  # the step moved it off the identity


@pytest.mark.parametrize("arch", [34, 50, 101])
def test_deeper_backbones_detect(arch):
    model = build_model("fasterrcnn", arch, num_classes=5, nl_type="snl", nl_nums=5, **SMALL).eval()
    assert len(model.backbone.body.nonlocal_paths) == 5
    with torch.no_grad():
        output = model(images()[:1])
    assert set(output[0]) == {"boxes", "labels", "scores"}
    rebuilt = build_model(**model.build_args)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_build_model_refuses_bad_detection_arguments():
    with pytest.raises(ConfigError, match="unknown arch"):
        build_model("maskrcnn", "152", num_classes=3)
    with pytest.raises(ConfigError, match="nl_nums"):
        build_model("maskrcnn", "18", num_classes=3, nl_type="snl", nl_nums=3)
    with pytest.raises(ConfigError, match="detection models"):
        build_model("resnet", "50", num_classes=3, min_size=64)
