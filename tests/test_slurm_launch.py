"""`srun python train_val.py ...` without torchrun (issue 24, item 2): the process group comes from SLURM's variables,
so SLURM's signal reaches every training process directly and each exits with status 75. Two real processes on
the CPU (gloo), started with the SLURM variables srun would set."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from test_resume import one_thread, write_runner  # noqa: F401  (one_thread: autouse fixture)

from lib.engine import distributed
from lib.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--dataset", "fake", "--input-size", "16", "--epochs", "1", "--eval-freq", "1", "--print-freq", "1",
       "--hflip", "0", "-j", "0", "--device", "cpu", "-b", "16", "--warmup-epochs", "0", "--lr", "0.2"]
CHECKPOINT = "0-fake-r-20-w-1snl-block.pth.tar"


@pytest.mark.parametrize("nodelist,first", [("node[01-04,07]", "node01"), ("a1,b2", "a1"), ("gpu7", "gpu7"),
                                            ("rack[2-3]-gpu[5,9],x1", "rack2-gpu5"), ("n[10,3-4]", "n10")])
def test_first_host_of_a_compressed_node_list(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_an_unreadable_node_list_is_one_line():
    with pytest.raises(ConfigError, match="node list"):
        distributed.first_slurm_host("node[01-04")


def slurm(procid, ntasks=2, **more):
    return dict(dict(SLURM_PROCID=str(procid), SLURM_NTASKS=str(ntasks), SLURM_LOCALID=str(procid),
                     SLURM_JOB_NODELIST="node[01-02]", SLURM_JOB_ID="123456"), **more)


def test_rank_world_and_master_come_from_slurm():
    assert distributed.launched_by_srun(slurm(1))
    assert distributed.slurm_process_variables(slurm(1)) == dict(
        RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="node01", MASTER_PORT=str(10000 + 123456 % 20000))
    # A master chosen by the user is kept; the step's own task count and node list win over the job's.
    step = slurm(0, ntasks=8, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="gpu[3-4]", MASTER_PORT="29400")
    assert distributed.slurm_process_variables(step) == dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0",
                                                             MASTER_ADDR="gpu3", MASTER_PORT="29400")


def test_torchrun_and_single_tasks_are_not_srun_launches():
    assert not distributed.launched_by_srun(dict(slurm(0), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))  # srun torchrun
    assert not distributed.launched_by_srun(slurm(0, ntasks=1))  # sbatch / srun -n 1: a plain process
    assert not distributed.launched_by_srun(dict(SLURM_NTASKS="4", SLURM_JOB_ID="1"))  # no task of its own
    assert not distributed.launched_by_srun({})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun(runner, argv, timeout=240, **env):
    """What `srun -n 2 python runner argv` starts: two processes with SLURM's variables and no torchrun's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and
            k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    port = str(free_port())
    processes = [subprocess.Popen([sys.executable, runner, *map(str, argv)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(base, OMP_NUM_THREADS="1", NO_DROPOUT="1", **env,
                                           **slurm(rank, SLURM_JOB_NODELIST="localhost", MASTER_PORT=port)))
                 for rank in range(2)]
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append((process.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("srun")
    runner = write_runner(str(folder))
    results = srun(runner, RUN + ["--output-dir", folder / "out"])
    assert [status for status, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    run_dir = folder / "out" / "fake" / "20" / "snl"
    return dict(runner=runner, run_dir=run_dir, stdout=results[0][1],
                checkpoint=torch.load(run_dir / CHECKPOINT, weights_only=True))


def test_srun_tasks_train_as_one_two_process_run(straight_run):
    log = (straight_run["run_dir"] / "log_train.txt").read_text()
    assert "batch size 16 per process x 2 process(es) = global batch 32" in log
    assert log.count("Epoch [1/1][1/8]") == 1  # 256 images / 32 = 8 steps, printed by rank 0 alone
    checkpoint = straight_run["checkpoint"]
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2


def test_a_signal_to_every_srun_task_exits_75_and_the_resume_continues(straight_run, tmp_path):
    """SIGTERM to both tasks at their 3rd iteration (as SLURM signals every task of a step): both checkpoint and exit
    75; `--resume auto` under srun again ends with the weights of the uninterrupted run."""
    argv = RUN + ["--output-dir", tmp_path]
    stopped = srun(straight_run["runner"], argv, SIGNAL_AT_BATCH="3", SIGNAL="SIGTERM")
    assert [status for status, _, _ in stopped] == [75, 75], stopped[0][2][-2000:] + stopped[1][2][-2000:]
    assert "stopped by SIGTERM at epoch 1, iteration 3" in stopped[0][2] and "stopped by" not in stopped[1][2]
    resumed = srun(straight_run["runner"], argv + ["--resume", "auto"])
    assert [status for status, _, _ in resumed] == [0, 0], resumed[0][2][-2000:]
    final = torch.load(tmp_path / "fake" / "20" / "snl" / CHECKPOINT, weights_only=True)["state_dict"]
    for key, value in straight_run["checkpoint"]["state_dict"].items():
        assert torch.equal(value, final[key]), key
