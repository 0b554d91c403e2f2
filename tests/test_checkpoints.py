"""models/checkpoints.py: rebuild_model gives back the network a checkpoint of any task holds, with its weights, and
torch.hub's from_checkpoint entry reads a checkpoint file through it."""
import pytest
import torch
from test_models import randomize_norms, reference_layout

from lib.errors import ConfigError
from models import build_model
from models.checkpoints import rebuild_model
from models.segmentation import build_segmentor


def same_outputs(model, source, shape):
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(model.eval()(x), source.eval()(x))


def test_ours_are_rebuilt_from_their_model_args():
    torch.manual_seed(0)
    source = randomize_norms(build_model("preresnet", 20, 7, nl_type="cgnl"))
    checkpoint = {"model_args": dict(source.build_args), "state_dict": source.state_dict(), "epoch": 3}
    model = rebuild_model(checkpoint)
    assert model.build_args == source.build_args and same_outputs(model, source, (2, 3, 32, 32))


def test_model_args_from_before_output_relu_rebuild_the_same_network():
    torch.manual_seed(0)
    source = randomize_norms(build_model("resnet", 50, 5, nl_type="snl"))
    saved = {key: value for key, value in source.build_args.items() if key != "output_relu"}
    model = rebuild_model({"model_args": saved, "state_dict": source.state_dict()})
    assert model.build_args["output_relu"] is False and same_outputs(model, source, (1, 3, 64, 64))


def test_a_reference_checkpoint_is_built_from_the_flags_with_its_classifier_size(capsys):
    torch.manual_seed(0)
    source = randomize_norms(build_model("preresnet", 20, 100, nl_type="snl", is_sys=True, is_norm=True))
    checkpoint = {"state_dict": reference_layout(source.state_dict(), data_parallel=True)}
    flags = dict(backbone="preresnet", arch=20, nl_type="snl", is_sys=True, is_norm=True)
    model = rebuild_model(checkpoint, flags, source="ref.pth.tar")
    assert model.build_args["num_classes"] == 100 and same_outputs(model, source, (2, 3, 32, 32))
    with pytest.raises(ConfigError, match="ref.pth.tar is a classification checkpoint without model arguments"):
        rebuild_model(checkpoint, source="ref.pth.tar")


def test_a_segmentation_checkpoint_gets_the_segmentor():
    torch.manual_seed(0)
    source = randomize_norms(build_segmentor(arch=50, num_classes=4, nl_type="snl", aux=False))
    checkpoint = {"model_args": dict(source.build_args), "state_dict": source.state_dict(), "iteration": 2}
    model = rebuild_model(checkpoint)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["out"], source.eval()(x)["out"])


def test_a_video_checkpoint_without_model_args_is_refused_even_with_flags():
    checkpoint = {"state_dict": {}, "args": {"task": "video"}}
    with pytest.raises(ConfigError, match="video checkpoint without model arguments .*train_video.py"):
        rebuild_model(checkpoint, dict(backbone="r3d", arch=18))


def test_weights_that_do_not_fit_are_one_line():
    source = build_model("preresnet", 20, 10, nl_type="snl")
    args = dict(source.build_args, nl_type="nl")
    with pytest.raises(ConfigError, match="checkpoint does not fit"):
        rebuild_model({"model_args": args, "state_dict": source.state_dict()})


def test_torch_hub_from_checkpoint(tmp_path):
    from test_export import ROOT
    torch.manual_seed(0)
    source = randomize_norms(build_model("preresnet", 20, 3, nl_type="snl"))
    path = tmp_path / "model_best.pth.tar"
    torch.save({"model_args": dict(source.build_args), "state_dict": source.state_dict()}, path)
    model = torch.hub.load(ROOT, "from_checkpoint", source="local", path=str(path))
    assert not model.training and same_outputs(model, source, (2, 3, 32, 32))


# --- a ResNet checkpoint in the reference's layout gets the reference's unit (output ReLU) ----------------------

class _Built(Exception):
    """Stops a run once its model is built and loaded."""


def reference_resnet(tmp_path):
    """A ResNet-50 + SNL of the reference's unit (output ReLU) with non-zero block BN, saved as its state_dict alone
    (the reference's layout): (model, path)."""
    torch.manual_seed(0)
    source = randomize_norms(build_model("resnet", 50, 10, nl_type="snl", output_relu=True)).eval()
    path = tmp_path / "ref.pth.tar"
    torch.save(source.state_dict(), path)
    return source, path


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_a_reference_resnet_checkpoint_gets_the_reference_unit(tmp_path, capsys):
    from lib.engine.checkpoint import load_checkpoint
    source, path = reference_resnet(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    lines = []
    model = rebuild_model(load_checkpoint(str(path)), dict(backbone="resnet", arch=50, nl_type="snl"),
                          source=str(path), notice=lines.append)
    assert model.build_args["output_relu"] is True and torch.equal(logits(model, x), logits(source, x))
    assert "blocks with output ReLU, Y = X + relu(BN(.)), the reference's unit" in lines[0]
    other = rebuild_model(load_checkpoint(str(path)), dict(backbone="resnet", arch=50, nl_type="snl",
                                                           output_relu=False), notice=lines.append)
    assert other.build_args["output_relu"] is False and "as --output-relu false asks" in lines[1]


FLAGS = ["--dataset", "fake", "--backbone", "resnet", "--arch", "50", "--nl-type", "snl", "--input-size", "32",
         "-b", "4", "-j", "0", "--device", "cpu"]


def test_train_val_valid_and_resume_build_a_reference_resnet_checkpoint_with_its_unit(tmp_path, capsys,
                                                                                      monkeypatch):
    import train_val
    source, path = reference_resnet(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    built = []

    def capture(model, *args, **kwargs):
        built.append(model)
        raise _Built()

    monkeypatch.setattr(train_val, "prepare_model", capture)
    with pytest.raises(_Built):
        train_val.main(train_val.parse_args(FLAGS + ["--valid", "--check_path", str(path)]))
    assert "stores no model arguments (the reference's layout): built from the model flags, blocks with output " \
           "ReLU" in capsys.readouterr().out
    with pytest.raises(_Built):
        train_val.main(train_val.parse_args(FLAGS + ["--resume", str(path), "--output-dir", str(tmp_path / "out"),
                                                     "--epochs", "1"]))
    for model in built:
        assert model.build_args["output_relu"] is True and torch.equal(logits(model, x), logits(source, x))
