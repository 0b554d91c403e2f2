"""The picture and table tools (tools/attention_maps.py, spectrum.py, compare_runs.py) and the training scripts'
SEEDS / DRY_RUN handling, on tiny models trained inside the tests and generated images and videos."""
import argparse
import contextlib
import copy
import csv
import io
import json
import os
import statistics
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from direct_formulas import affinity as direct_affinity
from PIL import Image
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)
from videogen import class_video, decode_video, write_frame_folder, write_ucf101, write_video

import train_val
from lib.cc import CrissCrossAttention
from lib.data.video import build_video_datasets
from lib.engine.classification.run import accuracy_tracker
from lib.engine.distributed import DistContext
from lib.engine.run_files import EpochFiles, IterationFiles
from lib.engine.run_state import model_kwargs, run_folder, save_checkpoint
from lib.engine.schedule import WarmupStepSchedule
from lib.engine.segmentation.poly import PolySchedule
from lib.engine.segmentation.run import miou_tracker
from lib.engine.video.cli import parse_video_args
from lib.engine.video.recipe import resolve_video_args
from lib.registry import NONLOCAL_BLOCKS, build_nonlocal, stage_based
from models import build_model
from models.segmentation import build_segmentor
from tools import attention_maps, compare_runs, spectrum
from tools._attention import capture_inputs, criss_cross_attention, nonlocal_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16  # network input side of the tiny models: stage 1 of a PreResNet is then 16 x 16 = 256 positions


def one_step_checkpoint(path, nl_type, **block_args):
    """A PreResNet-20 (3 classes) trained for one SGD step on random 16x16 images, saved as train_val.py saves
    the entries the tools read (model_args, state_dict, args)."""
    torch.manual_seed(0)
    model = build_model("preresnet", 20, num_classes=3, nl_type=nl_type, **block_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    torch.save({"model_args": model.build_args, "state_dict": model.state_dict(), "epoch": 1,
                "args": {"dataset": "fake", "input_size": SIZE}}, path)
    return path


def write_images(folder, count=2, size=24):
    """PNGs with structure (a gradient, a bright disc, a dark bar) so that positions differ."""
    paths = []
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(count):
        image = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 80 + 60 * k)], axis=-1)
        disc = (xx - size * (0.3 + 0.4 * k)) ** 2 + (yy - size * 0.4) ** 2 < (size / 5) ** 2
        image[disc] = (250, 240, 30)
        image[int(size * 0.75):int(size * 0.85), 2:size - 2] = (20, 20, 60)
        path = os.path.join(folder, f"img{k}.png")
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("visual")
    return {"root": root, "images": write_images(str(root)),
            "snl": one_step_checkpoint(root / "snl.pth.tar", "snl"),
            "nl": one_step_checkpoint(root / "nl.pth.tar", "nl"),
            "cc": one_step_checkpoint(root / "cc.pth.tar", "cc"),
            "cgnl": one_step_checkpoint(root / "cgnl.pth.tar", "cgnl"),
            "plain": one_step_checkpoint(root / "plain.pth.tar", None)}


def tool(module, argv, capsys):
    status = module.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def block_input(checkpoint, image_paths):
    """(model, block name, block, the block's input) as the tools compute them."""
    args = attention_maps.get_parser().parse_args([str(checkpoint)] + [str(p) for p in image_paths])
    loaded = attention_maps.load_model(args)
    images = attention_maps.load_images(args, loaded)
    name, block = nonlocal_blocks(loaded.model)[0]
    batch = torch.stack([tensor for _, tensor, _ in images])
    return loaded.model, name, block, capture_inputs(loaded.model, [(name, block)], batch)[name]


# --- attention maps ---------------------------------------------------------------------------------------------

def test_attention_map_grid_and_query_panels(workdir, capsys, tmp_path):
    display, queries = 64, ("0.1,0.1", "0.9,0.6")
    status, out, err = tool(attention_maps, [workdir["snl"], *workdir["images"], "--queries", *queries,
                                             "--display-size", display, "--output-dir", tmp_path], capsys)
    assert status == 0, err
    _, name, block, x = block_input(workdir["snl"], workdir["images"])
    assert name == "layer1.2" and x.shape[2:] == (SIZE, SIZE)
    att = block.affinity(x).dense()
    cells = [attention_maps.query_cell(attention_maps.parse_query(q), SIZE, SIZE) for q in queries]
    assert cells == [(1, 1), (9, 14)]  # (row, column): y = 0.6 of 16 rows, x = 0.9 of 16 columns
    for k, path in enumerate(workdir["images"]):
        picture = cv2.imread(str(tmp_path / f"img{k}_layer1.2.png"))
        assert picture.shape == (display, 3 * display + 2 * attention_maps.GAP, 3)
        rows = [att[k, r * SIZE + c] for r, c in cells]
        assert (rows[0] - rows[1]).abs().max() > 1e-3  # the two queries attend differently...
        first, second = (picture[:, (display + attention_maps.GAP) * j:][:, :display].astype(int) for j in (1, 2))
        outside_squares = np.ones((display, display), dtype=bool)
        for r, c in cells:  # the white squares differ by construction: compare the heat maps around them
            scale = display // SIZE
            outside_squares[max(0, r * scale - 6):(r + 1) * scale + 6, max(0, c * scale - 6):(c + 1) * scale + 6] = 0
        differing = np.abs(first - second).sum(axis=2)[outside_squares] > 30
        assert differing.mean() > 0.05  # ...and so do their heat maps
        r, c = cells[1]  # the query square is drawn in white around the query's cell
        top = r * (display // SIZE)
        assert (second[top - 1:top + 1, c * (display // SIZE) + 1] == 255).all()
    assert out.count("wrote ") == 2


def test_heat_map_scales_the_row_to_its_maximum():
    row = np.zeros(4)
    row[3] = 0.5  # weight only on cell (1, 1) of a 2 x 2 grid
    heat = attention_maps.heat_map(row, 2, 2, 8, 12)
    jet = cv2.applyColorMap(np.array([[0, 255]], dtype=np.uint8), cv2.COLORMAP_JET)[0]
    assert heat.shape == (8, 12, 3)
    assert (heat[0, 0] == jet[0]).all() and (heat[7, 11] == jet[1]).all()  # 0 -> blue, the maximum -> red


def test_cc_weights_reproduce_the_module_output():
    torch.manual_seed(1)
    module = CrissCrossAttention(6, 3).double()
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)  # H != W: a transposed row / column would not pass
    att = criss_cross_attention(module, x)  # (B, N, N)
    value = module.value_conv(x).flatten(2)  # (B, C, N)
    expected = x + module.gamma * torch.bmm(value, att.transpose(1, 2)).reshape(x.shape)
    torch.testing.assert_close(expected, module(x), rtol=1e-10, atol=1e-10)
    # rows are distributions over the query's own row and column only
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 35, dtype=torch.float64))
    i, j = 2, 3
    row = att[0, i * 7 + j].reshape(5, 7)
    cross = torch.zeros(5, 7, dtype=torch.bool)
    cross[i, :], cross[:, j] = True, True
    assert (row[~cross] == 0).all() and (row[cross] > 0).all()


def test_attention_map_of_a_cc_model(workdir, capsys, tmp_path):
    status, out, err = tool(attention_maps, [workdir["cc"], workdir["images"][0], "--display-size", 32,
                                             "--output-dir", tmp_path], capsys)
    assert status == 0, err
    assert "layer1.2" in out
    (png,) = [name for name in os.listdir(tmp_path) if name.endswith(".png")]
    assert cv2.imread(str(tmp_path / png)).shape == (32, 5 * 32 + 4 * attention_maps.GAP, 3)


@pytest.mark.parametrize("case, expected", [
    ("plain", "no nonlocal block"),
    ("cgnl", "is CGNL"),
    ("missing", "image file not found"),
    ("bad-query", "outside the image"),
    ("time-query", "x,y,t is for video checkpoints"),
    ("bad-block", "no nonlocal block named"),
])
def test_attention_map_errors_are_one_line(workdir, capsys, tmp_path, case, expected):
    checkpoint = workdir["snl"] if case in ("missing", "bad-query", "time-query", "bad-block") else workdir[case]
    image = tmp_path / "nope.png" if case == "missing" else workdir["images"][0]
    extra = {"bad-query": ["--queries", "1.5,0.2"], "time-query": ["--queries", "0.5,0.5,0"],
             "bad-block": ["--block", "layer9"]}.get(case, [])
    status, _, err = tool(attention_maps, [checkpoint, image, "--output-dir", tmp_path, *extra], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("attention_maps.py: error:") and expected in err
    assert not os.listdir(tmp_path)  # nothing written


def test_reference_checkpoint_needs_the_flags(workdir, capsys, tmp_path):
    """A checkpoint without model_args (as the reference writes them: a 1000-way fc2 for CIFAR) is rebuilt from
    the model flags and the dataset, as train_val.py --valid does."""
    torch.manual_seed(0)
    model = build_model("preresnet", 20, num_classes=1000, nl_type="snl", is_sys=True, is_norm=True)
    path = tmp_path / "reference.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "best_prec1": 1.0}, path)
    status, _, err = tool(attention_maps, [path, workdir["images"][0], "--output-dir", tmp_path], capsys)
    assert status == 2 and err.count("\n") == 1 and "--dataset" in err
    status, out, err = tool(attention_maps, [path, workdir["images"][0], "--dataset", "cifar10", "--is_sys",
                                             "--is_norm", "--display-size", 32, "--output-dir", tmp_path], capsys)
    assert status == 0, err
    picture = cv2.imread(str(tmp_path / "img0_layer1.2.png"))
    assert picture.shape == (32, 5 * 32 + 4 * attention_maps.GAP, 3)


def test_attention_map_command_line_error_has_no_traceback(workdir, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "attention_maps.py"), str(workdir["snl"]),
                             str(tmp_path / "missing.jpg")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "image file not found" in result.stderr
    assert "Traceback" not in result.stderr


# --- spectra ----------------------------------------------------------------------------------------------------

def test_spectrum_of_the_normalized_symmetric_affinity(workdir, capsys, tmp_path):
    png = tmp_path / "spectrum.png"
    status, out, err = tool(spectrum, [workdir["snl"], *workdir["images"], "--output", png, "--points", 11], capsys)
    assert status == 0, err
    assert png.stat().st_size > 0 and cv2.imread(str(png)) is not None
    with open(tmp_path / "spectrum.json") as f:
        numbers = json.load(f)
    (entry,) = numbers["blocks"]
    eigenvalues = np.asarray(entry["eigenvalues"])
    assert entry["symmetric"] and eigenvalues.shape == (2, SIZE * SIZE)
    assert eigenvalues.min() >= -1e-5 and eigenvalues.max() <= 2 + 1e-5
    assert sum(entry["histogram"]["counts"]) == eigenvalues.size
    # the same eigenvalues from the affinity written out directly (float64)
    _, _, block, x = block_input(workdir["snl"], workdir["images"])
    x = x.double()
    with torch.no_grad():
        att = direct_affinity(torch.nn.functional.conv2d(x, block.t.weight.double()),
                              torch.nn.functional.conv2d(x, block.p.weight.double()), True, True, False)
    direct = torch.linalg.eigvalsh(torch.eye(SIZE * SIZE, dtype=torch.float64) - att).numpy()
    np.testing.assert_allclose(eigenvalues, direct, atol=1e-9)
    if hasattr(block, "filter_response"):  # the spectral filter family's method: the curves are its norms
        lam = torch.tensor(entry["response"]["lam"], dtype=torch.float32)
        with torch.no_grad():
            expected = block.filter_response(lam).flatten(2).norm(dim=-1)
        np.testing.assert_allclose(entry["response"]["frobenius_norm"], expected.double().numpy(), rtol=1e-6)
        assert len(lam) == 11 and lam[0] == 0 and lam[-1] == 2
    else:
        assert entry["response"] is None and "no filter_response" in out


@pytest.mark.parametrize("block", ["nl", "cc"])
def test_spectrum_of_a_softmax_affinity_uses_real_parts(workdir, capsys, tmp_path, block):
    status, out, err = tool(spectrum, [workdir[block], workdir["images"][0], "--output", tmp_path / "s.png"],
                            capsys)
    assert status == 0, err
    (entry,) = json.loads((tmp_path / "s.json").read_text())["blocks"]
    eigenvalues = np.asarray(entry["eigenvalues"])
    assert not entry["symmetric"] and entry["method"].startswith("eigvals")
    assert (entry["response"] is None) == (block == "cc")  # NL's unit has a graph filter, CC has none
    # A is row-stochastic: L = I - A has the eigenvalue 0 (the constant vector), the others' real parts in [0, 2]
    assert abs(eigenvalues.min()) < 1e-9 and eigenvalues.max() <= 2 + 1e-9


def test_spectrum_refuses_models_without_an_affinity(workdir, capsys, tmp_path):
    for case, expected in (("plain", "no nonlocal block"), ("cgnl", "CGNL")):
        status, _, err = tool(spectrum, [workdir[case], workdir["images"][0], "--output", tmp_path / "s.png"],
                              capsys)
        assert status == 2 and err.count("\n") == 1 and expected in err
    assert not os.listdir(tmp_path)


# --- segmentation and video checkpoints, outputs ----------------------------------------------------------------

def write_wide_image(path, height=24, width=48):
    """A photo twice as wide as high, with a bright disc on the right half."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    image[(xx - width * 0.75) ** 2 + (yy - height * 0.5) ** 2 < (height / 4) ** 2] = (250, 240, 30)
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    """A train_seg.py run folder holding iter_2.pth.tar, written by its save_checkpoint (SNL head, ResNet-50)."""
    run_dir = tmp_path_factory.mktemp("seg") / "fake" / "resnet50" / "snl"
    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_segmentor("resnet", "50", num_classes=19, nl_type="snl")
    args = argparse.Namespace(dataset="fake", backbone="resnet", arch="50", keep_checkpoints=1, iters=3)
    save_checkpoint(IterationFiles(args), str(run_dir), 2, False, model, torch.optim.SGD(model.parameters(), lr=0.01),
                    None, PolySchedule(0.01, 3), miou_tracker(), args, DistContext(torch.device("cpu")),
                    SimpleNamespace(info=lambda message: None))
    return run_dir / "iter_2.pth.tar", model.eval()


def head_block_input(model, image_path, short_side):
    """The input of the segmentor's head block for an image file, computed here from the module's parts."""
    bgr = np.asarray(Image.open(image_path).convert("RGB"))[:, :, ::-1]
    height, width = bgr.shape[:2]
    scale = short_side / min(height, width)
    resized = cv2.resize(np.ascontiguousarray(bgr), (round(width * scale), round(height * scale)))
    rgb = resized[:, :, ::-1].astype(np.float32)
    image = torch.from_numpy(((rgb - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]).astype(np.float32))
    with torch.no_grad():
        return model.head.conv_in(model.backbone(image.permute(2, 0, 1)[None].contiguous())[1])


def head_affinity(model, photo):
    """A (1, N, N) of the head's SNL block in float64, from the direct formula (normalized, symmetric)."""
    x = head_block_input(model, photo, 32).double()
    block = model.head.block
    with torch.no_grad():
        return direct_affinity(torch.nn.functional.conv2d(x, block.t.weight.double()),
                               torch.nn.functional.conv2d(x, block.p.weight.double()), True, True, False)


def test_attention_maps_of_a_segmentation_checkpoint(segmentation_run, capsys, tmp_path):
    checkpoint, model = segmentation_run
    photo = write_wide_image(tmp_path / "street.png")
    display, queries = 40, ("0.1,0.1", "0.8,0.5")
    status, out, err = tool(attention_maps, [checkpoint, photo, "--input-size", 32, "--display-size", display,
                                             "--queries", *queries], capsys)
    assert status == 0, err
    assert "block head.block: 4x8 positions" in out  # 32 x 64 input, output stride 8
    path = checkpoint.parent / "attention_maps" / "iter_2" / "street_head.block.png"
    picture = cv2.imread(str(path))
    assert picture.shape == (display, 3 * 2 * display + 2 * attention_maps.GAP, 3)  # the photo's 2:1 kept
    # the panels are the rows of the head block's affinity, computed here from the formula
    att = head_affinity(model, photo)[0]
    shown = picture[:, :2 * display]
    for k, query in enumerate(queries):
        r, c = attention_maps.query_cell(attention_maps.parse_query(query), 4, 8)
        expected = attention_maps.panel(shown, att[r * 8 + c].numpy(), (r, c), 4, 8, 0.5)
        start = (k + 1) * (2 * display + attention_maps.GAP)
        drawn = picture[:, start:start + 2 * display].astype(int)
        assert np.abs(drawn - expected).mean() < 1.0


def test_spectrum_of_a_segmentation_checkpoint(segmentation_run, capsys, tmp_path, monkeypatch):
    checkpoint, model = segmentation_run
    photo = write_wide_image(tmp_path / "street.png")
    titles = []
    draw = spectrum.draw
    monkeypatch.setattr(spectrum, "draw", lambda results, title, path: (titles.append(title),
                                                                        draw(results, title, path)))
    status, out, err = tool(spectrum, [checkpoint, photo, "--input-size", 32, "--points", 5], capsys)
    assert status == 0, err
    png, numbers = checkpoint.parent / "spectrum_iter_2.png", checkpoint.parent / "spectrum_iter_2.json"
    assert cv2.imread(str(png)) is not None
    (entry,) = json.loads(numbers.read_text())["blocks"]
    assert entry["block"] == "head.block" and entry["positions"] == [32] and entry["symmetric"]
    att = head_affinity(model, photo)
    direct = torch.linalg.eigvalsh(torch.eye(32, dtype=torch.float64) - att)[0].numpy()
    np.testing.assert_allclose(entry["eigenvalues"][0], direct, atol=1e-9)
    # the title names the run (its folder) and the checkpoint, not only the file
    (title,) = titles
    assert os.path.join("fake", "resnet50", "snl", "iter_2.pth.tar") in title and "iteration 2" in title


def test_attention_maps_keep_the_photo_aspect_ratio(workdir, capsys, tmp_path):
    photo = write_wide_image(tmp_path / "wide.png")
    status, out, err = tool(attention_maps, [workdir["snl"], photo, "--display-size", 32, "--queries", "0.9,0.5",
                                             "--output-dir", tmp_path / "maps"], capsys)
    assert status == 0, err
    assert f"{SIZE}x{2 * SIZE} positions" in out  # the whole photo, its shorter side at the input size
    picture = cv2.imread(str(tmp_path / "maps" / "wide_layer1.2.png"))
    assert picture.shape == (32, 2 * 64 + attention_maps.GAP, 3)
    # the query on the right half sits in the right half of its panel (the photo is not cropped to a square)
    panel = picture[:, 64 + attention_maps.GAP:].astype(int)
    white = np.argwhere((panel == 255).all(axis=2))
    assert white[:, 1].min() > 48


def test_default_outputs_go_to_the_checkpoint_run_folder(workdir, capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "save_model" / "fake" / "20" / "snl_seed1"
    run_dir.mkdir(parents=True)
    checkpoint = run_dir / "1-fake-r-20-w-1snl-block.pth.tar"
    checkpoint.write_bytes(open(workdir["snl"], "rb").read())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    titles = []
    monkeypatch.setattr(spectrum, "draw", lambda results, title, path: (titles.append(title),
                                                                        open(path, "wb").close()))
    for module in (attention_maps, spectrum):
        status, out, err = tool(module, [checkpoint, workdir["images"][0], "--display-size", 16], capsys) \
            if module is attention_maps else tool(module, [checkpoint, workdir["images"][0]], capsys)
        assert status == 0, err
    assert not os.listdir(elsewhere)
    assert os.path.isfile(run_dir / "attention_maps" / "1-fake-r-20-w-1snl-block" / "img0_layer1.2.png")
    assert {"spectrum_1-fake-r-20-w-1snl-block.png", "spectrum_1-fake-r-20-w-1snl-block.json"} <= set(
        os.listdir(run_dir))
    # the title names the run: its folder (outside the current one: the last 4 parts) and the checkpoint, with
    # its epoch
    assert titles[0].startswith(os.path.join("save_model", "fake", "20", "snl_seed1",
                                             "1-fake-r-20-w-1snl-block.pth.tar (epoch 1)"))


@pytest.mark.parametrize("module, argv, expected", [
    (attention_maps, ["--output-dir", "{file}"], "--output-dir {file} is a file, not a folder"),
    (attention_maps, ["--output-dir", "{file}/maps"], "is a file, not a folder"),
    (spectrum, ["--output", "{folder}"], "--output {folder} is a folder"),
    (spectrum, ["--output", "{folder}/spectrum.txt"], "must end in one of"),
    (spectrum, ["--output", "{folder}/s.png", "--json", "{file}/s.json"], "is a file, not a folder"),
])
def test_outputs_are_checked_before_any_computation(workdir, capsys, tmp_path, monkeypatch, module, argv, expected):
    (tmp_path / "file").write_text("not a folder")
    names = {"file": tmp_path / "file", "folder": tmp_path}
    monkeypatch.setattr(module, "load_model", lambda args: pytest.fail("the model was loaded before the check"))
    argv = [a.format(**names) for a in argv]
    status, _, err = tool(module, [workdir["snl"], workdir["images"][0], *argv], capsys)
    assert status == 2 and err.count("\n") == 1 and expected.format(**names) in err


# --- video checkpoints ------------------------------------------------------------------------------------------

VIDEO_FRAMES = 24  # frames of each generated video (32 x 40 pixels)


def video_checkpoint(root, nl_type):
    """A train_video.py checkpoint of mc3-18 (3 classes, 4 frames of 32 x 32; its block in layer3 sees 4 x 4 x 4
    positions) written by lib.engine.run_state.save_checkpoint with train_video.py's resolved flags."""
    args = resolve_video_args(parse_video_args([
        "--dataset", "ucf101", "--data_dir", str(root / "data"), "--backbone", "mc3", "--arch", "18",
        "--clip-len", "4", "--frame-size", "32", "--nl-type", nl_type, "--output-dir", str(root / "out"),
        "--device", "cpu"]))
    torch.manual_seed(0)
    model = build_model(**model_kwargs(args, num_classes=3))
    run_dir = run_folder(args)
    os.makedirs(run_dir)
    return save_checkpoint(EpochFiles(args), run_dir, 1, False, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           None, WarmupStepSchedule(0.1, [1], 0, 0.1), accuracy_tracker(), args,
                           DistContext(torch.device("cpu")), SimpleNamespace(info=lambda m: None))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    write_ucf101(str(root / "data"))  # 3 classes x 3 groups; split 1 tests on group 1: 3 validation videos
    video = write_video(str(root / "wave.avi"), class_video(2, num_frames=VIDEO_FRAMES, seed=7), "MJPG")
    return {"root": root, "video": video, "snl": video_checkpoint(root, "snl"),
            "cgnl": video_checkpoint(root, "cgnl")}


def centre_clip(frames):
    """The validation clip of a 24-frame 32 x 40 video, written out: frames 10-13 (the 4 around the middle), the
    centred 32 x 32 square (no resize), Kinetics mean / std on 0-255 pixels -> ((3, 4, 32, 32), uint8 RGB)."""
    pixels = frames[10:14, :, 4:36]
    mean = np.array([0.4345, 0.4051, 0.3775]) * 255
    std = np.array([0.2768, 0.2713, 0.2737]) * 255
    clip = torch.from_numpy(((pixels - mean) / std).astype(np.float32)).permute(3, 0, 1, 2)
    return clip, pixels


def mc3_block_input(model, clip):
    """The input of the block layer3.1 of the mc3-18 model (stem, layer1, layer2, layer3[0]), in float64."""
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        return model.layer3[0](model.layer2(model.layer1(model.stem(clip[None].double()))))


def direct_snl_affinity(block, x):
    """A (B, N, N) of an SNL block for x (B, C, T, H, W) from the direct formula in float64 (N = T H W)."""
    with torch.no_grad():
        return _direct_snl_affinity(block, x)


def _direct_snl_affinity(block, x):
    theta = torch.einsum("oc,bcthw->bothw", block.t.weight.double().flatten(1), x)
    phi = torch.einsum("oc,bcthw->bothw", block.p.weight.double().flatten(1), x)
    return direct_affinity(theta, phi, True, True, False)


def test_video_attention_maps_are_the_space_time_affinity_rows(video_run, capsys, tmp_path):
    display, queries = 32, ("0.1,0.1,0", "0.9,0.6")
    status, out, err = tool(attention_maps, [video_run["snl"], video_run["video"], "--queries", *queries,
                                             "--display-size", display, "--output-dir", tmp_path], capsys)
    assert status == 0, err
    assert "block layer3.1: 4x4x4 positions (t, y, x)" in out and "(0,0,0) (2,2,3)" in out
    picture = cv2.imread(str(tmp_path / "wave_layer3.1.png"))
    step = display + attention_maps.GAP
    assert picture.shape == (2 * display + attention_maps.GAP, 4 * display + 3 * attention_maps.GAP, 3)  # 2 x 4
    # the tool's clip is the validation clip, decoded and normalized here independently
    args = attention_maps.get_parser().parse_args([str(video_run["snl"]), video_run["video"]])
    loaded = attention_maps.load_model(args)
    ((name, clip, _),) = attention_maps.load_images(args, loaded)
    expected_clip, pixels = centre_clip(decode_video(video_run["video"]))
    assert name == "wave"
    torch.testing.assert_close(clip, expected_clip, rtol=0, atol=1e-5)
    # a frame folder of the same frames (image_00001.png, ...) gives the same clip
    folder = write_frame_folder(str(tmp_path / "frames" / "wave_jpg"), decode_video(video_run["video"]))
    args = attention_maps.get_parser().parse_args([str(video_run["snl"]), folder])
    ((name, folder_clip, _),) = attention_maps.load_images(args, loaded)
    assert name == "wave_jpg" and torch.equal(folder_clip, clip)
    # the tool's A is the dense affinity of the direct formula (float64), N = T H W in (t, y, x) order
    x = mc3_block_input(loaded.model, expected_clip)
    att = direct_snl_affinity(loaded.model.layer3[1], x)[0]  # (64, 64)
    tool_x = capture_inputs(loaded.model, [("layer3.1", loaded.model.layer3[1])], clip[None])["layer3.1"]
    tool_att = attention_maps.attention_matrix(loaded.model.layer3[1], tool_x)[0]
    np.testing.assert_allclose(tool_att.double().numpy(), att.numpy(), atol=1e-6)
    # each panel: the query's row over one time step (4 x 4), on that step's frame, one colour scale per row
    frames = [cv2.resize(np.ascontiguousarray(frame[:, :, ::-1]), (display, display)) for frame in pixels]
    for k, (t, r, c) in enumerate([(0, 0, 0), (2, 2, 3)]):
        row = att[t * 16 + r * 4 + c].numpy()
        scale = (min(row.min(), 0.0), row.max())
        for step_index in range(4):
            expected = attention_maps.panel(frames[step_index], row[16 * step_index:16 * (step_index + 1)],
                                            (r, c) if step_index == t else None, 4, 4, 0.5, scale)
            drawn = picture[k * step:k * step + display, step_index * step:step_index * step + display].astype(int)
            assert np.abs(drawn - expected).mean() < 1.0
            assert (drawn == 255).all(axis=2).any() == (step_index == t)  # the white square: own frame only
    assert (att[0] - att[2 * 16 + 2 * 4 + 3]).abs().max() > 1e-3  # the two queries attend differently


def test_video_maps_and_spectrum_of_validation_clips(video_run, capsys, monkeypatch):
    checkpoint = video_run["snl"]
    status, out, err = tool(attention_maps, [checkpoint, "--indices", 1, "--display-size", 16], capsys)
    assert status == 0, err
    run_dir = os.path.dirname(checkpoint)
    maps = os.path.join(run_dir, "attention_maps", "0-ucf101-r-18-w-1snl-block", "ucf101_1_layer3.1.png")
    assert cv2.imread(maps).shape == (4 * 16 + 3 * attention_maps.GAP, 4 * 16 + 3 * attention_maps.GAP, 3)
    titles = []
    draw = spectrum.draw
    monkeypatch.setattr(spectrum, "draw", lambda results, title, path: (titles.append(title),
                                                                        draw(results, title, path)))
    status, out, err = tool(spectrum, [checkpoint, "--points", 5], capsys)  # default: the first 8
    assert status == 0, err
    with open(os.path.join(run_dir, "spectrum_0-ucf101-r-18-w-1snl-block.json")) as f:
        numbers = json.load(f)
    # the validation set's clips (train_video.py's own data pipeline), the block input, A and L all in float64
    _, val_set, _, _ = build_video_datasets("ucf101", video_run["root"] / "data", clip_len=4, frame_size=32)
    count = min(8, len(val_set))
    assert numbers["task"] == "video" and numbers["images"] == [f"ucf101_{k}" for k in range(count)]
    (entry,) = numbers["blocks"]
    assert entry["positions"] == [64] * count and entry["feature_size"] == [[4, 4, 4]] * count
    assert entry["symmetric"]
    args = spectrum.get_parser().parse_args([str(checkpoint)])
    model = spectrum.load_model(args).model
    for k in range(count):
        att = direct_snl_affinity(model.layer3[1], mc3_block_input(model, val_set[k][0]))
        direct = torch.linalg.eigvalsh(torch.eye(64, dtype=torch.float64) - att)[0].numpy()
        np.testing.assert_allclose(entry["eigenvalues"][k], direct, atol=1e-9)
    lam = torch.tensor(entry["response"]["lam"], dtype=torch.float32)
    with torch.no_grad():
        expected = model.layer3[1].filter_response(lam).flatten(2).norm(dim=-1)
    np.testing.assert_allclose(entry["response"]["frobenius_norm"], expected.double().numpy(), rtol=1e-6)
    (title,) = titles
    assert os.path.join("ucf101", "mc318", "snl", "0-ucf101-r-18-w-1snl-block.pth.tar (epoch 1)") in title
    assert title.endswith(f"{count} clip(s)")


@pytest.mark.parametrize("nl_type", [name for name in NONLOCAL_BLOCKS if stage_based(name)])
def test_video_grid_of_every_stage_block(nl_type):
    """Each stage-based block with dim=3 gives its (N, N) affinity, N = T H W, and a queries x steps grid."""
    torch.manual_seed(0)
    block = build_nonlocal(nl_type, 8, 4, dim=3).double().eval()
    x = torch.randn(1, 8, 3, 2, 4, dtype=torch.float64)  # T, H, W = 3, 2, 4
    att = attention_maps.attention_matrix(block, x)[0].numpy()
    assert att.shape == (24, 24) and np.isfinite(att).all()
    frames = [np.full((16, 16, 3), 40 * k, dtype=np.uint8) for k in range(3)]
    picture, cells = attention_maps.video_grid(frames, att, [(0.9, 0.9, 1.0), (0.0, 0.0)], 3, 2, 4, 0.5)
    assert cells == [(2, 1, 3), (1, 0, 0)]  # t = 1: the last step; no t: the middle one
    gap = attention_maps.GAP
    assert picture.shape == (2 * 16 + gap, 3 * 16 + 2 * gap, 3)
    for row, (t, _, _) in enumerate(cells):
        for k in range(3):
            drawn = picture[row * (16 + gap):row * (16 + gap) + 16, k * (16 + gap):k * (16 + gap) + 16]
            assert (drawn == 255).all(axis=2).any() == (k == t)


def test_step_frames_are_the_centres_of_the_frames_each_step_covers():
    assert [attention_maps.step_frame(k, 4, 16) for k in range(4)] == [2, 6, 10, 14]
    assert [attention_maps.step_frame(k, 4, 4) for k in range(4)] == [0, 1, 2, 3]
    assert [attention_maps.query_step(q, 4) for q in [(0, 0, 0), (0, 0, 0.5), (0, 0, 1), (0, 0)]] == [0, 2, 3, 2]


@pytest.mark.parametrize("module, case, expected", [
    (attention_maps, "cgnl", "is CGNL"),
    (spectrum, "cgnl", "only nonlocal blocks are CGNL"),
    (attention_maps, "missing", "video file not found"),
    (attention_maps, "index", "index 9 out of range: the ucf101 validation set has 9 videos"),
])
def test_video_errors_are_one_line(video_run, capsys, tmp_path, module, case, expected):
    checkpoint = video_run["cgnl" if case == "cgnl" else "snl"]
    inputs = {"missing": [tmp_path / "nope.avi"], "index": ["--indices", 9]}.get(case, [video_run["video"]])
    outputs = ["--output-dir", tmp_path] if module is attention_maps else ["--output", tmp_path / "s.png"]
    status, _, err = tool(module, [checkpoint, *inputs, *outputs], capsys)
    assert status == 2 and err.count("\n") == 1 and expected in err
    assert not os.listdir(tmp_path)


# --- run comparison ---------------------------------------------------------------------------------------------

def train(out, *argv):
    """train_val.py in this process, tiny: fake data at 8x8, 2 epochs, evaluated every epoch."""
    argv = ["--dataset", "fake", "--input-size", 8, "--epochs", 2, "--batch-size", 64, "--workers", 0,
            "--eval-freq", 1, "--print-freq", 100, "--warmup-epochs", 1, "--output-dir", out, *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        status = train_val.cli_main([str(a) for a in argv])
    assert status == 0, err.getvalue()


def top1s(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row["top1"] for row in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for block in ("snl", "a2"):
        for seed in (1, 2):
            train(out, "--nl-type", block, "--seed", seed, "--checkpoints", f"{block}_seed{seed}")
    train(out, "--nl-type", "none", "--seed", 1, "--checkpoints", "base")
    base = out / "fake" / "20"
    # the plain run "killed" after its first evaluation: its metrics stop at epoch 1 of 2
    metrics = base / "base" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    # a run started but never evaluated: args.yaml and no metrics.jsonl
    (base / "not_evaluated").mkdir()
    (base / "not_evaluated" / "args.yaml").write_text((base / "snl_seed1" / "args.yaml").read_text())
    return out


def test_compare_runs_table(runs, capsys, tmp_path):
    status, out, err = tool(compare_runs, [runs, "--csv", tmp_path / "runs.csv", "--plot", tmp_path / "top1.png"],
                            capsys)
    assert status == 0, err
    base = runs / "fake" / "20"
    with open(tmp_path / "runs.csv") as f:
        table = {row["block"]: row for row in csv.DictReader(f)}
    assert set(table) == {"snl", "a2", "none"}
    lines = {line.split(" | ")[3]: line for line in out.splitlines() if line.startswith("| fake")}
    for block in ("snl", "a2"):
        finals = [top1s(base / f"{block}_seed{seed}")[-1] for seed in (1, 2)]
        bests = [max(top1s(base / f"{block}_seed{seed}")) for seed in (1, 2)]
        row = table[block]
        assert row["seeds"] == "1 2" and row["unfinished"] == "0"
        assert float(row["final_mean"]) == pytest.approx(statistics.fmean(finals), abs=1e-9)
        assert float(row["final_std"]) == pytest.approx(statistics.stdev(finals), abs=1e-9)  # n - 1
        assert float(row["best_mean"]) == pytest.approx(statistics.fmean(bests), abs=1e-9)
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(bests), abs=1e-9)
        line = lines[f"1 x {block} @ stage 1"]
        assert f"{statistics.fmean(finals):.2f} ± {statistics.stdev(finals):.2f}" in line
        assert f"{statistics.fmean(bests):.2f} ± {statistics.stdev(bests):.2f}" in line
        plain_final = top1s(base / "base")[-1]
        assert float(row["delta_final"]) == pytest.approx(statistics.fmean(finals) - plain_final, abs=1e-9)
    assert table["snl"]["is_sys"] == "True" and table["a2"]["is_norm"] == "False"  # the blocks' defaults
    # docs/performance.md: + 672 for one SNL block
    assert int(table["snl"]["params"]) - int(table["none"]["params"]) == 672
    assert float(table["snl"]["gflops"]) > float(table["none"]["gflops"]) > 0
    # the unfinished run is marked, in the table and in a note; the run without metrics is skipped with a note
    assert "1 (unfinished: 1/2)" in lines["plain"] and table["none"]["unfinished"] == "1"
    assert f"note: {base / 'base'} is unfinished" in out
    assert f"note: skipped {base / 'not_evaluated'}: no metrics" in out
    assert "sample std (n - 1)" in out
    assert cv2.imread(str(tmp_path / "top1.png")) is not None


def test_compare_runs_without_runs_is_one_line_error(capsys, tmp_path):
    status, _, err = tool(compare_runs, [tmp_path], capsys)
    assert status == 2 and err.count("\n") == 1 and "no run with metrics" in err


# --- training scripts -------------------------------------------------------------------------------------------

def script(name, *args, env=None, path_prefix=None):
    environment = {key: value for key, value in os.environ.items() if key not in ("DRY_RUN", "SEEDS", "LAUNCH")}
    environment.update(env or {})
    if path_prefix:
        environment["PATH"] = f"{path_prefix}{os.pathsep}{environment['PATH']}"
    return subprocess.run(["sh", os.path.join(ROOT, name), *args], capture_output=True, text=True, env=environment)


def test_dry_run_prints_the_reference_commands_unchanged():
    result = script("train_snl.sh", env={"DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "python3 train_val.py --pretrained False --data_dir ./data --nl-type snl --nl-nums 1 --checkpoints snl "
        "--is_norm --is_sys --dataset cifar10 --backbone preresnet --arch 20"]
    assert result.stderr.splitlines() == ["python3 tools/compare_runs.py save_model/cifar10/20/snl"]


def test_seeds_repeat_every_experiment_into_its_own_folder():
    result = script("train_snl.sh", "blocks-cifar10", "--epochs", "1", "--output-dir", "/tmp/o",
                    env={"DRY_RUN": "yes", "SEEDS": "67 68"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert len(lines) == 13
    blocks = ("a2", "nl", "snl", "ns", "cgnl", "dnl")
    for k, (block, seed) in enumerate((b, s) for b in blocks for s in (67, 68)):
        assert lines[k].startswith("python3 train_val.py --pretrained False --dataset cifar10 ")
        assert f"--nl-type {block} " in lines[k]
        assert lines[k].endswith(f" --seed {seed} --checkpoints {block}_seed{seed}")
    assert lines[-1] == "python3 tools/compare_runs.py " + " ".join(
        f"/tmp/o/cifar10/20/{b}_seed{s}" for b in blocks for s in (67, 68))
    cifar100 = script("train_snl.sh", "blocks-cifar100", env={"DRY_RUN": "1", "SEEDS": "5"})
    assert len(cifar100.stdout.splitlines()) == 6 and "--arch 56" in cifar100.stdout
    assert cifar100.stderr.strip().endswith("save_model/cifar100/56/snl_seed5")


def test_cityscapes_experiment():
    result = script("train_snl.sh", "cityscapes", env={"DRY_RUN": "1", "DATA_ROOT": "/data"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "python3 train_seg.py --dataset cityscapes --data_dir /data --backbone resnet --arch 50 --nl-type snl "
        "--checkpoints snl"]
    seeded = script("train_snl.sh", "cityscapes", env={"DRY_RUN": "1", "SEEDS": "1 2"}).stdout.splitlines()
    assert [line.split("--checkpoints snl ")[1] for line in seeded] == ["--seed 1 --checkpoints snl_seed1",
                                                                        "--seed 2 --checkpoints snl_seed2"]


@pytest.mark.parametrize("dry_run", ["0", ""])
def test_dry_run_0_really_runs(tmp_path, dry_run):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "calls.txt"
    (fake_bin / "python3").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    (fake_bin / "python3").chmod(0o755)
    result = script("train_snl.sh", "cifar100", "--epochs", "1", env={"DRY_RUN": dry_run, "SEEDS": "3"},
                    path_prefix=fake_bin)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and calls[0].startswith("train_val.py ")
    assert calls[0].endswith("--seed 3 --checkpoints snl_seed3")
    assert calls[1] == "tools/compare_runs.py save_model/cifar100/56/snl_seed3"
    assert "python3 train_val.py" not in result.stdout  # nothing was only printed


def test_unknown_experiment_is_refused():
    result = script("train_snl.sh", "cifar11", env={"DRY_RUN": "1"})
    assert result.returncode == 2 and "unknown experiment 'cifar11'" in result.stderr and not result.stdout
