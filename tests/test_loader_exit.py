"""A run that fails while its data-loader workers are alive exits at once and leaves no process behind: its workers
ignore the stop signals (lib.data.shield_worker), so multiprocessing's exit hook alone (SIGTERM, then join) waited
for them forever. Real processes, real loader workers, each of the three entry points."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from datagen import write_imagefolder
from videogen import write_ucf101

EXIT_SECONDS = 90  # generous for a loaded 2-core machine; the hang this guards against lasted until killed


def leftover_processes(marker):
    """Processes whose command line names marker (the run's unique output folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def run_entry(script, argv, out_dir):
    try:
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv, "--output-dir", out_dir],
                                capture_output=True, text=True, cwd=ROOT, timeout=EXIT_SECONDS,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        for pid in leftover_processes(out_dir):
            os.kill(pid, 9)
        pytest.fail(f"{script} {' '.join(argv)} did not exit within {EXIT_SECONDS} s")
    assert leftover_processes(out_dir) == [], "loader workers left behind"
    return result


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover processes through /proc")
def test_unreadable_training_image_with_workers_exits(tmp_path):
    data = write_imagefolder(str(tmp_path / "images"), n_per_class=(4, 2))
    bad = os.path.join(data, "train", "cat", "0000.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    result = run_entry("train_val.py", ["--dataset", "imagefolder", "--data-dir", data, "--input-size", "32",
                                        "--arch", "20", "--epochs", "1", "-b", "4", "-j", "2"],
                       str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "0000.png" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover processes through /proc")
def test_empty_video_with_a_worker_exits(tmp_path):
    root = str(tmp_path / "ucf")
    splits = write_ucf101(root, num_frames=8, height=24, width=32)
    empty = os.path.join(root, "UCF-101", splits[1][0][0][0])
    open(empty, "wb").close()
    result = run_entry("train_video.py", ["--dataset", "ucf101", "--data-dir", root, "--clip-len", "4",
                                          "--frame-size", "32", "--arch", "18", "--epochs", "1", "-b", "2", "-j", "1"],
                       str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert os.path.basename(empty) in result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover processes through /proc")
def test_error_in_the_step_with_workers_exits(tmp_path):
    # An lr of 1e30 makes the loss of the second step NaN: the run stops in the step (exit 3) with workers alive.
    # (A crop too small for BatchNorm used to fail there too; it is refused up front now.)
    result = run_entry("train_seg.py", ["--dataset", "fake", "--lr", "1e30", "-b", "1", "-j", "2", "--iters", "3"],
                       str(tmp_path / "run"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "training loss became non-finite" in result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover processes through /proc")
def test_sigterm_to_the_process_group_with_workers_exits_75(tmp_path):
    """A cluster signals every process of the job: the loader workers must leave the signal to the trainer, which
    checkpoints and exits 75 (train_reid.py's loaders once lacked the shield and died of it first)."""
    import signal
    import time
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_reid.py"), "--dataset", "fake", "--epochs",
                             "3", "--print-freq", "1", "-j", "2", "--output-dir", out], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = os.path.join(out, "fake", "reid18", "snl", "log_train.txt")
    deadline = time.time() + EXIT_SECONDS
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and "][2/" in open(log).read():  # workers alive and serving batches
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("train_reid.py did not exit after SIGTERM")
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert leftover_processes(out) == []


def test_every_task_loader_shields_its_workers(tmp_path):
    """Each task's loaders take the shared options (lib.data.loader_options): shielded, timed, pinned only on CUDA."""
    from argparse import Namespace

    from lib.data import shield_worker
    from lib.engine.detection.setup import build_data
    from lib.engine.distributed import DistContext
    from lib.engine.reid.setup import load_reid_data
    ctx = DistContext(device=torch.device("cpu"))
    det = build_data(Namespace(dataset="fake", data_dir=str(tmp_path / "coco"), train_ann=None, train_images=None,
                               val_ann=None, val_images=None, hflip=0.5, model="maskrcnn", labels_as_ids=False,
                               aspect_ratio_group_factor=3, batch_size=2, seed=0, workers=2), ctx)
    reid = load_reid_data(Namespace(dataset="fake", data_dir="", img_size=(64, 32), hflip=0.5, pad=10, erasing=0.5,
                                    seq_len=4, test_sampling="dense", split=0, batch_size=16, num_instances=4,
                                    seed=0, workers=2), ctx)
    for loader in (det["train_loader"], det["val_loader"], reid["train_loader"]):
        assert loader.worker_init_fn is shield_worker and loader.timeout > 0 and not loader.pin_memory
