"""A REAL full disk (a small tmpfs, mounted by the test as root): the run and the tools stop with the one line that
names the file, the error and the last good checkpoint, whatever class the writing library raises (torch.save's
zip writer reports ENOSPC as a RuntimeError), leave no partial file, and the run resumes once there is space."""
import os
import shutil
import subprocess

import pytest
import torch
from test_preemption import FAKE, run_dir_of
from test_resume import one_thread  # noqa: F401  (autouse fixture)
from test_visual_tools import one_step_checkpoint, write_images

import train_val
from tools import attention_maps


def _can_mount():
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 3 MB at tmp_path/disk: one PreResNet-20 checkpoint (2.3 MB) fits, a second beside it does not."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def partial_files(folder):
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
            if name.endswith(".tmp")]


def fill(path):
    """Write zeros to path until the file system is full."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(handle, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(handle)


def test_a_real_full_disk_is_one_line_and_the_resume_completes(small_disk, capsys):
    argv = FAKE + ["--output-dir", str(small_disk), "--save-every", "2"]
    assert train_val.cli_main(argv) == 2
    err = capsys.readouterr().err
    run_dir = run_dir_of(small_disk)
    good = run_dir / "0-fake-r-20-w-1snl-block.iter2.pth.tar"
    assert err.count("\n") == 1 and err.startswith("train_val.py: error: cannot write "), err
    assert f"No space left on device (ENOSPC); the last good checkpoint is {good}; free space" in err
    assert "Traceback" not in err and not partial_files(small_disk)
    assert torch.load(good, weights_only=True)["epoch_progress"][0]["iterations"] == 2  # intact

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert train_val.cli_main(argv + ["--resume", "auto"]) == 0
    assert (run_dir / "1-fake-r-20-w-1snl-block.pth.tar").is_file() and not partial_files(small_disk)


def test_a_tool_writing_onto_a_full_disk_is_one_line(small_disk, tmp_path, capsys):
    images = write_images(str(tmp_path))
    checkpoint = one_step_checkpoint(tmp_path / "snl.pth.tar", "snl")
    fill(small_disk / "filler")
    status = attention_maps.main([str(checkpoint), *images, "--output-dir", str(small_disk / "maps")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"attention_maps.py: error: cannot write {small_disk / 'maps' / 'img0_layer1.2.png'}: "
                          f"No space left on device; free space"), err
    assert not partial_files(small_disk) and not os.listdir(small_disk / "maps")
