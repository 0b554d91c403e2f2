"""A training step costs one agreement of the processes, not several: the finite-loss check rides on the boundary's
reduction (lib.engine.runtime.LossCheck in RunGuard.at_boundary), and the epoch's running sums stay on the device
until printed. Counted on 2 real gloo processes."""
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lib.engine.distributed import DistContext
from lib.engine.epochs import train_one_epoch
from lib.engine.errors import NonFiniteLoss
from lib.engine.preemption import RunGuard

BATCHES = 5


class QuietLog:
    def info(self, text):
        pass

    warn = info


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_epoch(rank, port, poison_at, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    calls = []
    reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return reduce(tensor, *args, **kwargs)
    dist.all_reduce = counted
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []

    def criterion(output, target):
        steps.append(1)
        loss = torch.nn.functional.cross_entropy(output, target)
        return loss * float("nan") if len(steps) == poison_at and rank == 1 else loss
    loader = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(BATCHES)]
    ctx = DistContext(device=torch.device("cpu"), rank=rank, world_size=2, distributed=True)
    args = SimpleNamespace(amp="off", print_freq=1000, epochs=1)
    outcome = "done"
    try:
        with RunGuard(ctx, QuietLog(), signals=()) as guard:
            train_one_epoch(model, criterion, optimizer, None, loader, ctx, 0, 0.1, args, QuietLog(),
                            lambda x, y, ctx, args: (x, y), guard=guard)
    except NonFiniteLoss as error:
        outcome = str(error)
    results[rank] = (len(calls), outcome)
    dist.destroy_process_group()


def run_two(poison_at=None):
    results = mp.Manager().dict()
    mp.spawn(one_epoch, args=(free_port(), poison_at, results), nprocs=2)
    return dict(results)


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed (gloo)")
def test_one_reduction_per_step_on_two_processes():
    results = run_two()
    # one agreement before each batch (errors, signals, checkpoint due, the last step's loss), one finite-loss
    # check after the last step, one reduction of the epoch's sums (before: also one per step for the loss)
    assert [results[rank][0] for rank in (0, 1)] == [BATCHES + 2] * 2
    assert all(outcome == "done" for _, outcome in results.values())


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed (gloo)")
def test_a_non_finite_loss_in_one_process_stops_both_at_the_next_boundary():
    results = run_two(poison_at=3)
    for rank in (0, 1):
        assert "non-finite" in results[rank][1] and "iteration 3" in results[rank][1]
    assert "another process" in results[0][1] and "another process" not in results[1][1]


def test_deterministic_turns_on_torch_deterministic_algorithms(monkeypatch):
    """--deterministic promised reproducible GPU runs but set only cuDNN's flags."""
    from lib.engine.runtime import set_determinism
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
