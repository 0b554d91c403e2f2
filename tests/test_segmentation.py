"""Semantic segmentation: the segmentor and its heads, the Cityscapes data and pipeline, mIoU, train_seg.py end to
end (train, evaluate, outputs, exact resume after a kill, 2-process evaluation)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torchvision
from runs import records, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

import train_seg
from lib import NONLOCAL_BLOCKS, build_nonlocal
from lib.data.cityscapes import CLASSES, build_cityscapes
from lib.data.iteration_sampler import IterationBatchSampler
from lib.data.seg_transforms import SegPipeline, largest_class_ratio, random_crop, train_transform
from lib.engine.distributed import DistContext
from lib.engine.logger import RunLogger
from lib.engine.run_lock import LOCK_NAME, RunLock
from lib.engine.segmentation.metrics import all_reduce_confusion, confusion_matrix, segmentation_metrics
from lib.engine.segmentation.poly import PolySchedule
from lib.errors import ConfigError
from models.segmentation import NonlocalHead, build_segmentor, init_head
from tools._measure import TensorShapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny geometry for the end-to-end runs: fake scenes resized to about 32x64, crops 32x64, batch 2.
TINY = ["--dataset", "fake", "--crop-size", "32", "64", "--img-scale", "64", "32", "-b", "2", "--device", "cpu",
        "--print-freq", "1"]


# ----------------------------------------------------------------------------------------------- model

def test_segmentor_output_size_and_aux_head_only_in_training():
    torch.manual_seed(0)
    model = build_segmentor("resnet", "50", num_classes=19, nl_type="snl")
    x = torch.randn(2, 3, 37, 61)  # not multiples of 8
    model.train()
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 19, 37, 61)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 19, 37, 61)
    # output stride 8: layer3 and layer4 keep stride 8 and dilate by 2 and 4
    assert model.backbone.layer3[1].conv2.dilation == (2, 2) and model.backbone.layer4[1].conv2.dilation == (4, 4)
    assert model.backbone(x)[1].shape == (2, 2048, 5, 8)
    block = model.head.block
    assert type(block).__name__ == "SNL" and block.t.in_channels == 512 and block.t.out_channels == 256
    rebuilt = build_segmentor(**model.build_args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_plain_head_without_aux_head():
    model = build_segmentor(nl_type="none", aux=False).train()
    assert isinstance(model.head.block, torch.nn.Identity) and model.aux_head is None
    assert model.build_args["nl_type"] is None
    out = model(torch.randn(2, 3, 17, 30))
    assert set(out) == {"out"} and out["out"].shape == (2, 19, 17, 30)


@pytest.mark.parametrize("nl_type", list(NONLOCAL_BLOCKS))
def test_every_registry_block_builds_into_the_segmentor(nl_type):
    with torch.device("meta"):  # the full-size model, at no cost: the forward is tested on a narrow head below
        model = build_segmentor(nl_type=nl_type)
    assert isinstance(model.head.block, NONLOCAL_BLOCKS[nl_type])
    assert model.build_args["nl_type"] == nl_type


@pytest.mark.parametrize("nl_type", list(NONLOCAL_BLOCKS))
def test_every_registry_block_runs_in_the_head_and_starts_as_the_identity(nl_type):
    torch.manual_seed(0)
    block = build_nonlocal(nl_type, 32, 16, zero_init=True)
    head = NonlocalHead(64, 32, 19, block)
    init_head(head, skip=block)
    x = torch.randn(2, 64, 9, 13, requires_grad=True)
    out = head(x)
    assert out.shape == (2, 19, 9, 13)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    features = torch.randn(2, 32, 9, 13)
    for mode in (True, False):
        block.train(mode)
        with torch.no_grad():
            assert torch.equal(block(features), features), f"{nl_type} is not the identity at init (train={mode})"


def test_head_init_keeps_the_blocks_zero_init():
    model = build_segmentor(nl_type="snl", aux=False)
    unit = model.head.block.stages[0]
    assert torch.count_nonzero(unit.bn.weight) == 0 and torch.count_nonzero(unit.bn.bias) == 0
    assert model.head.classifier.weight.std() < 0.02  # normal(0, 0.01), as mmseg's classifier


@pytest.mark.parametrize("path, dense", [("auto", False), ("dense", True)])
def test_snl_head_never_forms_the_n_by_n_affinity(path, dense):
    torch.manual_seed(0)
    n = 16 * 16  # N >= 4 C': the head's SNL takes the factorized path, as at 512x1024 (N = 8192, C' = 256)
    head = NonlocalHead(64, 64, 19, build_nonlocal("snl", 64, 32, zero_init=True, affinity_path=path))
    x = torch.randn(1, 64, 16, 16, requires_grad=True)
    with TensorShapes() as recorder:
        head(x).sum().backward()
    square = [shape for shape in recorder.shapes if shape.count(n) >= 2]
    assert bool(square) == dense, square  # the dense path does form it: the check would see it


def test_torchvision_weights_load_into_the_dilated_backbone(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = torchvision.models.resnet50()  # random weights in torchvision's format, with its fc
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = build_segmentor(nl_type="snl", pretrained=str(path))
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[key], value), key
    assert "pretrained" not in model.build_args
    torch.save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    with pytest.raises(ConfigError, match="not a torchvision ResNet-50"):
        build_segmentor(pretrained=str(tmp_path / "r101.pth"))

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(ConfigError, match="pass a local path") as error:
        build_segmentor(pretrained=True)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------ data

# A few labelIds per kind: evaluated classes with their train ids, and ids that are ignored.
KNOWN = {7: 0, 8: 1, 23: 10, 26: 13, 33: 18, 0: 255, 9: 255, 30: 255}


def label_ids_map(height, width, seed):
    """Vertical bands of known labelIds (one per id in KNOWN), shifted by seed."""
    ids = np.array(list(KNOWN), dtype=np.uint8)
    columns = (np.arange(width) * len(ids) // width + seed) % len(ids)
    return np.repeat(ids[columns][None, :], height, axis=0)


def write_cityscapes(root, cities=None, size=(16, 32)):
    """root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and root/gtFine/<split>/<city>/
    <name>_gtFine_labelIds.png, real PNG files. Returns {split: [(image, labelIds)]}."""
    cities = cities or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    written = {}
    for split, per_city in cities.items():
        written[split] = []
        for city, count in per_city.items():
            for k in range(count):
                name = f"{city}_{k:06d}_000019"
                ids = label_ids_map(*size, seed=k)
                image = np.random.default_rng(k).integers(0, 256, size=size + (3,), dtype=np.uint8)
                for folder, suffix, data in (("leftImg8bit", "_leftImg8bit.png", image),
                                             ("gtFine", "_gtFine_labelIds.png", ids)):
                    os.makedirs(os.path.join(root, folder, split, city), exist_ok=True)
                    assert cv2.imwrite(os.path.join(root, folder, split, city, name + suffix), data)
                written[split].append((image, ids))
    return written


def test_cityscapes_folder_loads_with_train_ids(tmp_path):
    written = write_cityscapes(str(tmp_path / "cityscapes"))
    pipeline = SegPipeline(img_scale=(64, 32), crop_size=(8, 16))
    train, val = build_cityscapes(str(tmp_path), pipeline)  # <data_dir>/cityscapes is found
    assert len(train) == 3 and len(val) == 2
    image, label = val[0]
    assert image.shape == (3, 32, 64)  # resized to the scale, keeping the aspect ratio
    ids = written["val"][0][1]
    assert label.shape == ids.shape == (16, 32)  # the label keeps the full resolution
    for label_id, train_id in KNOWN.items():
        assert (label.numpy()[ids == label_id] == train_id).all(), label_id
    image, label = train[(1, 123)]
    assert image.shape == (3, 8, 16) and label.shape == (8, 16) and label.dtype == torch.int64
    assert set(np.unique(label.numpy())) <= {0, 1, 10, 13, 18, 255}
    again = train[(1, 123)]
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])  # a function of (index, seed)


def test_missing_or_incomplete_cityscapes_is_a_one_line_error(tmp_path, capsys):
    pipeline = SegPipeline()
    with pytest.raises(ConfigError, match="leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip") as error:
        build_cityscapes(str(tmp_path / "nowhere"), pipeline)
    assert "\n" not in str(error.value)
    write_cityscapes(str(tmp_path))
    os.remove(tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png")
    with pytest.raises(ConfigError, match="incomplete: .*frankfurt_000001_000019_gtFine_labelIds.png is missing"):
        build_cityscapes(str(tmp_path), pipeline)
    argv = ["--data_dir", str(tmp_path / "nowhere"), "--iters", "1", "--output-dir", str(tmp_path / "out")]
    assert train_seg.cli_main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "gtFine_trainvaltest.zip" in stderr
    assert not (tmp_path / "out").exists()  # a failed start leaves nothing behind


def test_largest_class_ratio_ignores_255_and_needs_two_classes():
    assert largest_class_ratio(np.array([[0, 0, 0, 255, 255, 1]], np.uint8)) == 0.75
    assert largest_class_ratio(np.array([[0, 1, 255, 255, 255, 255]], np.uint8)) == 0.5
    assert largest_class_ratio(np.array([[3, 3, 255]], np.uint8)) == 1.0  # one class only: never accepted


def test_crop_never_exceeds_the_largest_class_ratio_when_a_valid_crop_exists():
    label = np.zeros((64, 128), np.uint8)  # left half one class, right half stripes of two classes
    label[:, 64:] = (np.arange(64) // 4 % 2)[None, :] + 1
    image = np.zeros((64, 128, 3), np.uint8)
    unconstrained = [largest_class_ratio(random_crop(image, label, (32, 48), 1.0, np.random.default_rng(s))[1])
                     for s in range(100)]
    assert max(unconstrained) == 1.0  # crops that are one class happen without the constraint
    for seed in range(100):
        crop_image, crop = random_crop(image, label, (32, 48), 0.75, np.random.default_rng(seed))
        assert crop.shape == (32, 48) and crop_image.shape == (32, 48, 3)
        assert largest_class_ratio(crop) < 0.75
    one_class = np.full((64, 128), 5, np.uint8)  # no valid crop: a crop is still returned
    assert random_crop(image, one_class, (32, 48), 0.75, np.random.default_rng(0))[1].shape == (32, 48)


def test_padding_to_the_crop_uses_label_255_and_image_0():
    image = np.full((10, 20, 3), 200, np.uint8)
    label = np.arange(200, dtype=np.uint8).reshape(10, 20) % 19
    pipeline = SegPipeline(img_scale=(20, 10), crop_size=(16, 32), ratio_range=(1.0, 1.0), hflip=0.0,
                           photometric=False)
    out_image, out_label = train_transform(image, label, pipeline, np.random.default_rng(0))
    assert out_image.shape == (3, 16, 32) and out_label.shape == (16, 32)
    assert torch.equal(out_label[:10, :20], torch.from_numpy(label.astype(np.int64)))
    assert (out_label[10:] == 255).all() and (out_label[:, 20:] == 255).all()
    assert (out_image[:, 10:] == 0).all() and (out_image[:, :, 20:] == 0).all()
    assert (out_image[:, :10, :20] != 0).all()


def test_iteration_batches_depend_on_seed_and_iteration_only():
    full = IterationBatchSampler(5, 3, total_iters=6, seed=7)
    resumed = IterationBatchSampler(5, 3, total_iters=6, start_iter=4, seed=7)
    assert list(full)[4:] == list(resumed)
    indices = [index for batch in list(full)[:5] for index, _ in batch]  # 15 positions = 3 epochs of 5
    assert all(sorted(indices[e * 5:(e + 1) * 5]) == list(range(5)) for e in range(3))
    ranks = [IterationBatchSampler(5, 3, total_iters=6, rank=r, world_size=2, seed=7) for r in (0, 1)]
    single = IterationBatchSampler(5, 6, total_iters=6, seed=7)
    assert ranks[0].batch(2) + ranks[1].batch(2) == single.batch(2)  # the global batch is the same


def test_poly_schedule():
    schedule = PolySchedule(0.01, 40000, 0.9, 1e-4)
    assert schedule.lr_at(0) == pytest.approx(0.01)
    assert schedule.lr_at(20000) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert schedule.lr_at(40000) == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------------------ mIoU

def test_miou_hand_computed_with_ignored_pixels_and_an_absent_class():
    target = torch.tensor([0, 0, 1, 1, 255, 2, 2, 0])
    pred = torch.tensor([0, 1, 1, 1, 3, 2, 0, 0])  # class 3 only predicted on an ignored pixel
    matrix = confusion_matrix(pred, target, num_classes=4)
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    stats = segmentation_metrics(matrix)
    # IoU: class 0: 2 / (3 + 3 - 2); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1); class 3: absent
    assert stats["IoU"][:3] == pytest.approx([50.0, 200 / 3, 50.0])
    assert np.isnan(stats["IoU"][3]) and np.isnan(stats["Acc"][3])
    assert stats["mIoU"] == pytest.approx((50.0 + 200 / 3 + 50.0) / 3)  # not divided by 4
    assert stats["aAcc"] == pytest.approx(100 * 5 / 7) and stats["pixels"] == 7
    assert stats["mAcc"] == pytest.approx(100 * (2 / 3 + 1 + 0.5) / 3)


def test_confusion_matrix_of_one_process_is_returned_unchanged():
    matrix = torch.arange(16).reshape(4, 4)
    assert all_reduce_confusion(matrix, DistContext(device=torch.device("cpu"))) is matrix


# ------------------------------------------------------------------------------------------ end to end

RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train_seg

kill_at = int(os.environ.get("KILL_AT_ITER", "0"))
if kill_at:
    class DyingLoss(train_seg.SegLoss):
        calls = 0
        def forward(self, outputs, target):
            DyingLoss.calls += 1
            if DyingLoss.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().forward(outputs, target)
    train_seg.build_criterion = lambda args: DyingLoss(args.aux_weight)
sys.exit(train_seg.cli_main(sys.argv[1:]))
"""


def run_runner(folder, argv, **env):
    return run_script(folder, RUNNER, argv, 600, **env)


def test_train_evaluate_outputs_and_exact_resume_after_a_kill(tmp_path, capsys):
    common = TINY + ["--iters", "3", "--eval-every", "2"]
    straight = tmp_path / "straight"
    assert train_seg.cli_main(common + ["-j", "0", "--output-dir", str(straight)]) == 0
    run_dir = straight / "fake" / "resnet50" / "snl"
    names = sorted(os.listdir(run_dir))
    assert [n for n in names if n.endswith(".pth.tar")] == ["iter_3.pth.tar", "model_best.pth.tar"]
    rows = records(run_dir)
    assert [row["iteration"] for row in rows] == [2, 3]
    assert all(row["images"] == 8 and set(row["IoU"]) == set(CLASSES) for row in rows)
    assert rows[-1]["lr"] == pytest.approx(PolySchedule(0.01, 3).lr_at(2))
    log = (run_dir / "log_train.txt").read_text()
    assert "img/s" in log and "eta" in log and "per-class IoU" in log
    assert "final mIoU" in log and "best mIoU" in log
    checkpoint = torch.load(run_dir / "iter_3.pth.tar", weights_only=True)
    assert checkpoint["iteration"] == 3 and checkpoint["model_args"]["nl_type"] == "snl"
    assert build_segmentor(**checkpoint["model_args"]).state_dict().keys() == checkpoint["state_dict"].keys()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("mIoU")] == [2, 3]
    assert "IoU/road" in events.Tags()["scalars"]
    # Starting over a folder that holds checkpoints is refused.
    assert train_seg.cli_main(common + ["-j", "0", "--output-dir", str(straight)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    # --valid evaluates a checkpoint, rebuilt from its model arguments, as the run's last evaluation did.
    assert train_seg.cli_main(TINY + ["-j", "0", "--valid", "--check_path", str(run_dir / "iter_3.pth.tar")]) == 0
    assert f" * mIoU {rows[-1]['mIoU']:.2f}" in capsys.readouterr().out

    # Killed in iteration 2, with a checkpoint after iteration 1 (--save-every 1), between two evaluations: the
    # resumed run's first evaluation reports the training loss of iterations 1 and 2, as the uninterrupted run's.
    killed = tmp_path / "killed"
    first = run_runner(tmp_path, common + ["-j", "1", "--output-dir", killed, "--save-every", "1"], KILL_AT_ITER="2")
    assert first.returncode == -9, first.stderr[-2000:]
    killed_dir = killed / "fake" / "resnet50" / "snl"
    assert os.path.isfile(killed_dir / "iter_1.pth.tar") and not os.path.exists(killed_dir / "iter_2.pth.tar")
    assert train_seg.cli_main(common + ["-j", "1", "--output-dir", str(killed), "--resume", "auto"]) == 0
    assert "resuming" in capsys.readouterr().out
    expected = checkpoint["state_dict"]
    resumed = torch.load(killed_dir / "iter_3.pth.tar", weights_only=True)["state_dict"]
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    assert [dict(row, time=0) for row in records(killed_dir)] == [dict(row, time=0) for row in rows]


# One process of a 2-process evaluation (started with torchrun's environment variables): train_seg's evaluate() on
# the fake validation set with a small fixed model; rank 0 prints the stats as JSON.
EVAL_WORKER = """
import json, sys
sys.path.insert(0, {root!r})
import torch
import train_seg
from lib.engine.distributed import init_distributed, cleanup
from lib.engine.logger import RunLogger

torch.set_num_threads(1)
args = train_seg.resolve_seg_args(train_seg.parse_seg_args({argv!r}))
ctx = init_distributed("cpu")
torch.manual_seed(0)
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 3, padding=1)
    def forward(self, x):
        return {{"out": self.conv(x)}}
_, val_set = train_seg.build_seg_datasets(args)
stats = train_seg.evaluate(Model(), train_seg.val_loader_of(val_set, ctx, args), ctx, args, RunLogger(False))
if ctx.is_main:
    print("STATS " + json.dumps(stats))
cleanup(ctx)
"""


class PixelModel(torch.nn.Module):
    """The worker's Model: one 3x3 convolution, 3 -> 19 classes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_a_held_run_folder_refuses_a_second_segmentation_run(tmp_path, capsys):
    run_dir = tmp_path / "fake" / "resnet50" / "snl"
    with RunLock(str(run_dir)):  # as if another run held the folder
        assert train_seg.cli_main(TINY + ["--iters", "1", "--output-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"run folder {run_dir} is in use by pid {os.getpid()}" in err
        assert os.listdir(run_dir) == [LOCK_NAME]  # the refused run wrote nothing


def test_evaluation_over_two_processes_equals_one_process(tmp_path):
    script = tmp_path / "eval_worker.py"
    script.write_text(EVAL_WORKER.format(root=ROOT, argv=TINY + ["-j", "0"]))
    base = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000),
                WORLD_SIZE="2")
    workers = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)))
               for r in (0, 1)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    double = json.loads(outputs[0][0].split("STATS ", 1)[1])
    args = train_seg.resolve_seg_args(train_seg.parse_seg_args(TINY + ["-j", "0"]))
    ctx = DistContext(device=torch.device("cpu"))
    torch.manual_seed(0)
    _, val_set = train_seg.build_seg_datasets(args)
    single = train_seg.evaluate(PixelModel(), train_seg.val_loader_of(val_set, ctx, args), ctx, args,
                                RunLogger(False))
    assert double["images"] == single["images"] == 8  # every image once over the two shards
    assert double["pixels"] == single["pixels"]
    assert double["mIoU"] == single["mIoU"] and double["aAcc"] == single["aAcc"]
    np.testing.assert_array_equal(single["IoU"], double["IoU"])  # NaN (absent classes) in the same places
    assert 0 < single["mIoU"] < 100


def test_recipe_config_and_explicit_flags(tmp_path):
    from lib.engine.segmentation.cli import parse_seg_args, resolve_seg_args
    argv = ["--dataset", "cityscapes", "--data_dir", "DATA", "--backbone", "resnet", "--arch", "50", "--nl-type", "snl",
            "--checkpoints", "snl"]
    args = resolve_seg_args(parse_seg_args(argv))
    assert (args.iters, args.batch_size, args.lr, args.min_lr, args.power, args.weight_decay, args.eval_every) == \
        (40000, 4, 0.01, 1e-4, 0.9, 5e-4, 4000)
    assert args.crop_size == [512, 1024] and args.img_scale == [2048, 1024] and args.pretrained is True
    config = tmp_path / "c.yaml"
    config.write_text("crop-size: [256, 512]\niters: 100\nnl-type: none\n")
    args = resolve_seg_args(parse_seg_args(["--config", str(config), "--iters", "7", "--lr", "0.02"]))
    assert (args.crop_size, args.iters, args.lr, args.nl_type) == ([256, 512], 7, 0.02, None)
    fake = resolve_seg_args(parse_seg_args(["--dataset", "fake"]))
    assert fake.crop_size == [64, 128] and fake.pretrained is False
    config.write_text("crop-size: [256]\n")
    with pytest.raises(ConfigError, match="two values"):
        resolve_seg_args(parse_seg_args(["--config", str(config)]))


def test_photometric_distortion_applies_each_step_half_of_the_time():
    from lib.data.seg_transforms import photometric_distortion
    image = np.random.default_rng(0).integers(40, 216, size=(8, 8, 3), dtype=np.uint8)
    outputs = [photometric_distortion(image.copy(), np.random.default_rng(seed)) for seed in range(400)]
    assert all(out.dtype == np.uint8 and out.shape == image.shape for out in outputs)
    unchanged = sum(np.array_equal(out, image) for out in outputs)
    assert 10 <= unchanged <= 45  # all four steps skipped: probability 1/16, 25 expected of 400
    brightness = [int(out.astype(int).sum() - image.astype(int).sum()) for out in outputs]
    assert min(brightness) < 0 < max(brightness)
