"""Helpers of the tests that run the entry points: a run's metrics.jsonl rows, a runner script (which a test
makes die or stop at a chosen point) run in a subprocess, and a resumed run compared with an uninterrupted one."""
import json
import os
import subprocess
import sys

import torch
from conftest import ROOT


def records(run_dir):
    """The run's metrics.jsonl rows, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_script(folder, source, argv, timeout, **env):
    """Write source ({root}: the repository) as folder/runner.py and run it with argv, one CPU thread and env."""
    runner = os.path.join(folder, "runner.py")
    with open(runner, "w") as f:
        f.write(source.format(root=ROOT))
    return subprocess.run([sys.executable, runner, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env), timeout=timeout)


def assert_same_training_state(expected, got):
    """Two checkpoints' weights and SGD momentum buffers, bit for bit."""
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], got["optimizer"]["state"][index]["momentum_buffer"])
