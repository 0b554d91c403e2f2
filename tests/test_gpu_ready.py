"""CUDA paths that no GPU here can run (issue 25), checked on the CPU with torch.cuda and
torch.distributed.init_process_group monkeypatched: the process group's timeout and device_id, the single-process
GPU made current, pinned memory only for CUDA runs, the emulated-bf16 warning."""
import datetime

import pytest
import torch
import torch.distributed as dist

import train_val
from lib.data import FakeDataset, build_loaders
from lib.engine import distributed, runtime
from lib.engine.amp_support import emulated_bf16_warning

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_ENV = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
             "SLURM_STEP_NODELIST", "SLURM_JOB_ID")


class Recorder:
    def __init__(self):
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible 'GPUs' of compute capability 7.0 (bf16 only by emulation); records set_device."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    return made_current


@pytest.fixture
def captured_init(monkeypatch):
    """dist.init_process_group's arguments, without starting a group; no launcher watch."""
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(distributed, "die_with_launcher", lambda **kwargs: None)
    for name in TORCHRUN_ENV + SLURM_ENV:
        monkeypatch.delenv(name, raising=False)
    return calls


def torchrun_env(monkeypatch, rank, world_size, local_rank):
    for name, value in zip(("RANK", "WORLD_SIZE", "LOCAL_RANK"), (rank, world_size, local_rank)):
        monkeypatch.setenv(name, str(value))


# --- 25.1: an explicit timeout, and device_id for NCCL ------------------------------------------------------------

def test_gloo_process_group_gets_an_explicit_timeout(captured_init, monkeypatch):
    torchrun_env(monkeypatch, 0, 2, 0)
    ctx = distributed.init_distributed("cpu")
    assert ctx.distributed and ctx.world_size == 2
    assert captured_init == [dict(backend="gloo", init_method="env://", timeout=datetime.timedelta(minutes=60))]


def test_nccl_process_group_gets_the_timeout_and_its_device(captured_init, fake_cuda, monkeypatch):
    torchrun_env(monkeypatch, 1, 2, 1)
    ctx = distributed.init_distributed("cuda", timeout_minutes=90)
    assert ctx.device == torch.device("cuda", 1) and fake_cuda == [torch.device("cuda", 1)]
    call, = captured_init
    assert call["backend"] == "nccl" and call["timeout"] == datetime.timedelta(minutes=90)
    assert call["device_id"] == torch.device("cuda", 1)


def test_dist_timeout_flag_reaches_the_process_group(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def init(device, launcher_pid, timeout_minutes):
        seen.append(timeout_minutes)
        raise Stop

    monkeypatch.setattr(runtime, "init_distributed", init)
    for argv, minutes in (([], 60), (["--dist-timeout", "120"], 120)):
        with pytest.raises(Stop):
            train_val.main(train_val.parse_args(["--dataset", "fake", *argv]))
        assert seen[-1] == minutes


def test_a_non_positive_timeout_is_a_config_error(captured_init, monkeypatch):
    torchrun_env(monkeypatch, 0, 2, 0)
    with pytest.raises(distributed.ConfigError, match="--dist-timeout"):
        distributed.init_distributed("cpu", timeout_minutes=0)


# --- 25.7: the single process's GPU is made current; memory pinned only for CUDA runs -----------------------------

def test_single_process_cuda_n_becomes_the_current_device(captured_init, fake_cuda):
    ctx = distributed.init_distributed("cuda:1")
    assert not ctx.distributed and ctx.device == torch.device("cuda", 1)
    assert fake_cuda == [torch.device("cuda", 1)] and captured_init == []


def test_single_process_cpu_run_touches_no_gpu(captured_init, fake_cuda):
    assert distributed.init_distributed("cpu").device == torch.device("cpu") and fake_cuda == []


def test_memory_is_pinned_only_for_a_cuda_run(fake_cuda):
    data = FakeDataset(8, 4, 2)
    for device, pinned in (("cpu", False), (torch.device("cpu"), False), (None, False),
                           (torch.device("cuda", 1), True)):
        train_loader, val_loader, _ = build_loaders(data, data, 4, 0, device=device)
        assert train_loader.pin_memory is pinned and val_loader.pin_memory is pinned, device


# --- 25.5: bf16 on a GPU without bf16 tensor cores ----------------------------------------------------------------

def test_emulated_bf16_on_a_gpu_warns_and_suggests_fp16(fake_cuda):
    log = Recorder()
    runtime.warn_slow_amp("bf16", torch.device("cuda", 0), log)
    warning, = log.warnings
    assert "emulated" in warning and "--amp fp16" in warning


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_other_amp_modes_on_that_gpu_say_nothing(fake_cuda, amp):
    log = Recorder()
    runtime.warn_slow_amp(amp, torch.device("cuda", 0), log)
    assert log.warnings == []


def test_native_bf16_gpu_says_nothing(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert emulated_bf16_warning("bf16", torch.device("cuda", 0)) is None


# --- 25.6 (helper, not yet wired): the run's own device RNG across a resume ---------------------------------------

@pytest.fixture
def fake_cuda_rng(monkeypatch, fake_cuda):
    """Per-device CUDA RNG states kept in a dict; the 'GPUs' of fake_cuda."""
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: states.__setitem__(
        torch.device(device).index, state.clone()))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda all_states: states.update(enumerate(all_states)))
    return states


def test_device_rng_is_saved_for_the_runs_own_gpu_and_restored_onto_another_count(fake_cuda_rng, monkeypatch):
    from lib.engine.device_rng import DEVICE_KEY, device_rng_entry, restore_device_rng
    entry = device_rng_entry(torch.device("cuda", 1))
    assert torch.equal(entry[DEVICE_KEY], torch.tensor([1], dtype=torch.uint8))
    assert device_rng_entry(torch.device("cpu")) == {}
    # Resumed in a job that sees one GPU (cuda:0), with 8 states of an older layout saved beside it.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    log = Recorder()
    state = dict(entry, cuda=[torch.tensor([9], dtype=torch.uint8)] * 8)
    assert restore_device_rng(state, torch.device("cuda", 0), log.warn)
    assert torch.equal(fake_cuda_rng[0], torch.tensor([1], dtype=torch.uint8)) and log.warnings == []


def test_an_older_checkpoint_with_another_gpu_count_warns(fake_cuda_rng):
    from lib.engine.device_rng import restore_device_rng
    log = Recorder()
    legacy = dict(cuda=[torch.tensor([7], dtype=torch.uint8)] * 8)  # 8 GPUs saved, 2 visible here
    assert not restore_device_rng(legacy, torch.device("cuda", 0), log.warn)
    warning, = log.warnings
    assert "8 GPU(s)" in warning and "not restored" in warning
    assert torch.equal(fake_cuda_rng[0], torch.tensor([0], dtype=torch.uint8))  # untouched
    # Same count: restored as before, without a word; a CPU run's checkpoint or a CPU resume: nothing to say.
    same = dict(cuda=[torch.tensor([5], dtype=torch.uint8), torch.tensor([6], dtype=torch.uint8)])
    assert restore_device_rng(same, torch.device("cuda", 1), log.warn) and fake_cuda_rng[1].item() == 6
    assert not restore_device_rng(dict(cuda=[]), torch.device("cuda", 0), log.warn)
    assert not restore_device_rng(legacy, torch.device("cpu"), log.warn)
    assert len(log.warnings) == 1


def test_video_test_loader_pins_only_for_a_cuda_run(fake_cuda):
    import argparse

    from lib.engine.video.setup import test_loader_of
    args = argparse.Namespace(batch_size=4, test_clips=2, workers=0, seed=0)
    for device, pinned in ((torch.device("cpu"), False), (torch.device("cuda", 1), True)):
        loader = test_loader_of(list(range(6)), distributed.DistContext(device=device), args)
        assert loader.pin_memory is pinned


def test_dist_timeout_may_change_on_resume():
    from lib.engine.resume_check import changed_settings
    args = train_val.parse_args(["--dataset", "fake", "--dist-timeout", "120"])
    assert changed_settings(dict(vars(args), dist_timeout=60), args) == {}


def test_epoch_tasks_pin_memory_only_for_a_cuda_run(fake_cuda):
    import argparse

    from lib.engine.epochs import epoch_data
    data = FakeDataset(8, 4, 2)
    args = argparse.Namespace(batch_size=4, workers=0, seed=0)
    for device, pinned in ((torch.device("cpu"), False), (torch.device("cuda", 1), True)):
        loaders = epoch_data(data, data, None, args, distributed.DistContext(device=device))
        assert loaders["train_loader"].pin_memory is pinned and loaders["val_loader"].pin_memory is pinned
