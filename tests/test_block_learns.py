"""output_relu of the image models: a zero-initialized block with the output ReLU gets no gradient (the reference's
ImageNet ResNet form), so ResNet and the segmentation head build theirs without it by default; PreResNet keeps its
default; checkpoints from before output_relu was stored rebuild the same network (docs/blocks.md, "output_relu")."""
import pytest
import torch
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)
from torch import nn

import train_seg
from lib.engine.checkpoint import model_args_mismatch
from lib.engine.classification.cli import parse_args
from lib.engine.classification.recipe import resolve_args
from lib.engine.run_state import model_kwargs
from lib.engine.segmentation.cli import parse_seg_args, resolve_seg_args
from models import build_model, with_output_relu
from models.segmentation import build_segmentor


def resnet(**kwargs):
    torch.manual_seed(0)
    return build_model("resnet", 50, 5, nl_type="snl", nl_nums=1, **kwargs)


def segmentor(**kwargs):
    torch.manual_seed(0)
    return build_segmentor("resnet", 50, num_classes=3, nl_type="snl", aux=False, **kwargs)


def block_of(model):
    return model.layer3[5] if hasattr(model, "nonlocal_paths") else model.head.block


def forward(model, x):
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def block_grads(model, x):
    """{name: gradient} of the block's parameters after one training-mode backward of the output's sum."""
    model.train()
    model.zero_grad(set_to_none=True)
    forward(model, x).sum().backward()
    return {name: p.grad.clone() for name, p in block_of(model).named_parameters()}


def dead_form(model):
    """The reference's ResNet form: the output ReLU and the block's BN zeroed, as its init does."""
    for module in block_of(model).modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def sgd_step(model, grads, lr=0.1):
    with torch.no_grad():
        for name, p in block_of(model).named_parameters():
            p -= lr * grads[name]


@pytest.mark.parametrize("build", [resnet, segmentor], ids=["resnet50", "segmentor"])
def test_default_block_starts_as_the_identity_and_learns(build):
    model = build()
    block = block_of(model)
    assert model.build_args["output_relu"] is False and block.output_relu is False
    x = torch.randn(1, block.t.in_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(block.eval()(x), x)
    image = torch.randn(2, 3, 64, 64)
    grads = block_grads(model, image)
    assert grads["stages.0.bn.weight"].abs().sum() > 0 and grads["stages.0.bn.bias"].abs().sum() > 0
    sgd_step(model, grads)  # once the BN weight is off 0, every parameter of the block gets a gradient
    grads = block_grads(model, image)
    assert all(g.abs().sum() > 0 for g in grads.values()), {n: float(g.abs().sum()) for n, g in grads.items()}


@pytest.mark.parametrize("build", [resnet, segmentor], ids=["resnet50", "segmentor"])
def test_output_relu_true_learns_from_bn_weight_one_and_the_zeroed_form_never_does(build):
    model = build(output_relu=True)
    block = block_of(model)
    assert model.build_args["output_relu"] is True and block.output_relu is True
    assert torch.equal(block.stages[0].bn.weight, torch.ones_like(block.stages[0].bn.weight))
    image = torch.randn(2, 3, 64, 64)
    assert all(g.abs().sum() > 0 for g in block_grads(model, image).values())
    # The defect: with the BN at 0 relu's input is exactly 0 and relu'(0) = 0, so every gradient is exactly 0,
    # and stays so after a step.
    dead_form(model)
    for _ in range(2):
        grads = block_grads(model, image)
        assert all(torch.count_nonzero(g) == 0 for g in grads.values())
        sgd_step(model, grads)
    assert torch.count_nonzero(block.stages[0].bn.weight) == 0


def test_preresnet_keeps_the_output_relu_by_default():
    torch.manual_seed(0)
    model = build_model("preresnet", 20, 10, nl_type="snl").eval()
    assert model.build_args["output_relu"] is True and model.get_submodule(model.nonlocal_paths[0]).output_relu is True
    assert build_model("preresnet", 20, 10, nl_type="gsnl").build_args["output_relu"] is False  # gsnl's own
    assert build_model("preresnet", 20, 10, nl_type="cgnl").build_args["output_relu"] is None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
        for output_relu, same in ((True, True), (False, False)):
            other = build_model("preresnet", 20, 10, nl_type="snl", output_relu=output_relu).eval()
            other.load_state_dict(model.state_dict())
            assert torch.equal(other(x), logits) is same


def test_resnet_blocks_without_the_switch_are_unchanged():
    with torch.device("meta"):
        assert build_model("resnet", 50, 5, nl_type="cgnl").build_args["output_relu"] is None
        assert build_model("resnet", 50, 5, nl_type=None).build_args["output_relu"] is None
        assert build_segmentor("resnet", 50, nl_type="cc").build_args["output_relu"] is None
        assert build_segmentor("resnet", 50, nl_type=None).build_args["output_relu"] is None


def old_args(model):
    """model_args as a checkpoint written before output_relu was stored holds them."""
    return {k: v for k, v in model.build_args.items() if k != "output_relu"}


@pytest.mark.parametrize("build, rebuild", [(lambda: build_model("preresnet", 20, 10, nl_type="snl"), build_model),
                                            (lambda: dead_form(resnet(output_relu=True)), build_model),
                                            (lambda: dead_form(segmentor(output_relu=True)), build_segmentor)],
                         ids=["preresnet20", "resnet50", "segmentor"])
def test_checkpoint_without_output_relu_rebuilds_the_same_network(build, rebuild):
    """A checkpoint of the old code (ResNet / segmentor: the dead form, its BN still at 0) gives the same logits."""
    model = build().eval()
    saved = old_args(model)
    rebuilt = rebuild(**saved).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(forward(rebuilt, x), forward(model, x))
    assert model_args_mismatch(saved, rebuilt.build_args) == ""  # a resume accepts it
    assert with_output_relu(saved) == rebuilt.build_args
    flipped = dict(rebuilt.build_args, output_relu=not rebuilt.build_args["output_relu"])
    assert "output_relu" in model_args_mismatch(saved, flipped)  # and refuses the other form


@pytest.mark.parametrize("argv, expected", [([], None), (["--output-relu"], True), (["--output_relu", "False"], False),
                                            (["--output-relu", "true"], True)])
def test_output_relu_flag_reaches_the_model(argv, expected):
    args = resolve_args(parse_args(["--dataset", "imagenet", "--backbone", "resnet"] + argv))
    assert model_kwargs(args, 5)["output_relu"] is expected
    seg_args = resolve_seg_args(parse_seg_args(["--dataset", "fake"] + argv))
    assert train_seg.segmentor_kwargs(seg_args)["output_relu"] is expected
    with torch.device("meta"):
        assert build_model(**model_kwargs(args, 5)).build_args["output_relu"] is bool(expected)


@pytest.mark.parametrize("backbone, arch, output_relu, bn_weight",
                         [("resnet", 50, None, 0.0), ("resnet", 50, True, 1.0), ("r3d", 18, None, 0.0),
                          ("r3d", 18, True, 1.0)])
def test_a_block_reset_after_building_on_meta_has_its_start_weights(backbone, arch, output_relu, bn_weight):
    """Built on 'meta', then to_empty + reset_parameters: the block's output BN gets the weight a direct build gives
    (0 without the ReLU: the identity; 1 with it, or it would never learn)."""
    model = build_model(backbone, arch, 5, nl_type="snl", output_relu=output_relu, device="meta")
    block = model.get_submodule(model.nonlocal_paths[0]).to_empty(device="cpu")
    block.reset_parameters()
    assert torch.equal(block.stages[0].bn.weight, torch.full_like(block.stages[0].bn.weight, bn_weight))
