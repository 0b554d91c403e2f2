"""Stopping and checkpointing a run between two iterations: preemption signals, --save-every N iterations,
--save-every-minutes M, and errors of one process that every process must hear about.

    with RunGuard(ctx, log, args.save_every, args.save_every_minutes) as guard:  # signals now only set a flag
        ...
        progress = resumed or EpochProgress()        # partial sums; a mid-epoch checkpoint stores every rank's
        for i in range(progress.iterations, num_batches):
            batch, error = fetch_batch(batches)      # a bad image, a dead loader worker: returned, not raised
            guard.at_boundary(epoch * num_batches + i, lambda: save(progress), f"epoch {epoch + 1}, iteration {i}",
                              error)
            ...train on batch...
            progress.add(loss_value, correct, batch_size)
            guard.step_done()
        guard.saved(save_checkpoint(...))           # the end-of-epoch checkpoint restarts the minutes budget

at_boundary is called by every process at the same point. It agrees with the other processes (one all_reduce
of three flags: an error, a stop signal, a checkpoint due by time), then, in this order: raises the error of the
process that had one (as ConfigError, "rank k: ..." when it was another process's, so that rank 0 logs it); calls
save() when a checkpoint is due (every process calls it: it gathers RNG states; only rank 0 writes); and raises
Preempted after the checkpoint when a signal asked the run to stop. A signal handler never does more than note the
signal: a second signal while the checkpoint is being written changes nothing (the third SIGINT interrupts, for a
user at a terminal; every write is atomic, so that corrupts nothing either).
"""
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from lib.engine.distributed import gather_objects, max_values
from lib.engine.errors import NonFiniteLoss, Preempted, write_error, write_failure
from lib.errors import ConfigError

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


@dataclass
class EpochProgress:
    """Where one process is inside an epoch (or an evaluation interval) and the partial sums of its training
    statistics: what a mid-epoch checkpoint carries for each process, so that the resumed run reports the epoch's
    loss and accuracy over all of its iterations, summed in the same order as an uninterrupted run."""
    iterations: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0

    def add(self, loss, correct, count):
        """One step: its mean loss and number correct may be tensors on the device (summed there in float64 / int64,
        the same arithmetic as Python's floats and ints, read only when printed or saved)."""
        self.iterations += 1
        self.loss_sum += (loss.detach().double() if torch.is_tensor(loss) else loss) * count
        self.correct += correct
        self.count += count

    def mean_loss(self):
        return float(self.loss_sum) / self.count if self.count else 0.0

    def state_dict(self):
        return {key: value.item() if torch.is_tensor(value) else value for key, value in asdict(self).items()}

    @classmethod
    def from_state(cls, state):
        return cls(**{key: state[key] for key in cls.__dataclass_fields__ if key in state})


class RunGuard:
    """The object a training loop consults at every iteration boundary (see the module docstring).

    save_every: a checkpoint when the iteration count (as passed to at_boundary) is a multiple of it (0 = never);
    save_every_minutes: a checkpoint when that much time has passed since the last one (0 = never). The caller
    reports checkpoints it writes itself (e.g. at the end of an epoch) with saved(path), which restarts the clock.
    """

    def __init__(self, ctx, log, save_every=0, save_every_minutes=0, signals=STOP_SIGNALS, clock=time.monotonic):
        self.ctx, self.log = ctx, log
        self.save_every = int(save_every or 0)
        self.save_seconds = 60.0 * float(save_every_minutes or 0)
        self.signals, self.clock = signals, clock
        self.received = []  # names of the signals received, in order
        self.last_path = None  # the newest complete checkpoint of this run, as far as this process knows
        self.steps_since_save = 0
        self._last_save = clock()
        self._previous = {}

    # Signals.
    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum, frame):
        self.received.append(signal.Signals(signum).name)
        if signum == getattr(signal, "SIGINT", None) and self.received.count("SIGINT") >= 3:
            raise KeyboardInterrupt  # a user at a terminal insists; atomic writes keep every file whole

    @property
    def stop_requested(self):
        return bool(self.received)

    # Checkpoints.
    def saved(self, path):
        """Report a checkpoint written at this point (path on rank 0, anything elsewhere): restarts the clock."""
        self.last_path = path
        self.steps_since_save = 0
        self._last_save = self.clock()

    def step_done(self):
        self.steps_since_save += 1

    def _signal_number(self):
        return int(signal.Signals[self.received[0]]) if self.received else 0

    def _agreed_signal(self, number):
        """Adopt the signal that stopped another process (so that every process names it)."""
        if number and not self.received:
            self.received.append(signal.Signals(int(number)).name)
        return bool(number)

    def stop_agreed(self):
        """True in every process if a signal reached any of them (a collective: all processes call it)."""
        return self._agreed_signal(max_values(self.ctx, [self._signal_number()])[0])

    def _agree(self, error, loss_check):
        """(error somewhere, stop, due by time, a non-finite last loss somewhere) agreed over all processes."""
        due = self.save_seconds > 0 and self.clock() - self._last_save >= self.save_seconds
        nonfinite = loss_check.flag() if loss_check is not None else 0.0
        failed, number, due, nonfinite = max_values(self.ctx, [error is not None, self._signal_number(), due,
                                                               nonfinite])
        return failed > 0, self._agreed_signal(number), due > 0, nonfinite > 0

    def at_boundary(self, iteration, save, where, error=None, loss_check=None):
        """Between two iterations (before the one numbered `iteration`, counted from the run's start): raise
        NonFiniteLoss if the last step's loss (loss_check, a lib.engine.runtime.LossCheck) was not finite in any
        process, raise an error any process had, checkpoint if due (save() returns the file's path on rank 0), stop
        if signalled. `where` names the position for the stop message, e.g. "epoch 3, iteration 120". One
        reduction, the step's only synchronisation."""
        failed, stop, due, nonfinite = self._agree(error, loss_check)
        if nonfinite:
            raise loss_check.error()
        if failed:
            raise_agreed_error(self.ctx, error)
        due = due or (self.save_every > 0 and iteration > 0 and iteration % self.save_every == 0)
        if (due or stop) and self.steps_since_save > 0:
            self.saved(save())
        if stop:
            self.stop(where)

    def stop(self, where):
        """Raise Preempted with the one line that says where the run stopped and how to continue it."""
        name = self.received[0] if self.received else "a signal"
        kept = f"checkpoint {self.last_path}" if self.last_path else "no checkpoint yet (nothing was trained)"
        raise Preempted(f"stopped by {name} at {where}; {kept}; continue with --resume auto")


@contextmanager
def reported_errors(guard, log_path):
    """Around a run's training: a failed write of its records (metrics.jsonl, tensorboard, log_train.txt) becomes
    one line naming the file, the error and the last good checkpoint (WriteFailed, exit status 2; checkpoint
    writes do so themselves). An unexpected error (a bug, a CUDA error) of a process other than rank 0, which the
    ranks could not agree on, is appended to log_path as "rank k: ..." before it ends that process: the others
    then fail in their next collective, and the log says where it started."""
    try:
        yield
    except (OSError, RuntimeError) as error:  # torch's writers report a full disk as a RuntimeError
        failed = write_error(error, getattr(error, "filename", None))
        if failed is None:
            raise _noted(guard, log_path, error)
        raise write_failure(failed.filename or "a file of the run", failed, guard.last_path) from None
    except Exception as error:
        raise _noted(guard, log_path, error)


def _noted(guard, log_path, error):
    """error, after noting it in log_path when it is an unexpected error of a process other than rank 0."""
    if guard.ctx.rank != 0 and not isinstance(error, (ConfigError, Preempted, NonFiniteLoss)):
        note_error(log_path, f"ERROR: rank {guard.ctx.rank}: {type(error).__name__}: {error}")
    return error


def note_error(path, text):
    """Append one line to path in one write (O_APPEND: whole, even while rank 0 writes the same file)."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # e.g. an output folder this node does not share: the line is on this process's stderr anyway
    try:
        os.write(handle, (" ".join(text.split()) + "\n").encode("utf-8"))
    finally:
        os.close(handle)


def raise_agreed_error(ctx, error):
    """Every process raises, after one gather of the messages: a process other than rank 0 that failed its own
    error, every other process (rank 0, which logs it, among them) the failed ranks' messages, each prefixed with
    its rank ("rank 1: cannot read image ...")."""
    if not ctx.distributed:
        raise error
    messages = gather_objects(ctx, " ".join(str(error).split()) if error is not None else None)
    if error is not None and not ctx.is_main:
        raise error
    raise ConfigError("; ".join(f"rank {rank}: {text}" for rank, text in enumerate(messages) if text is not None))


def fetch_batch(batches):
    """(next batch, None), or (None, ConfigError) when reading it failed on bad input (an unreadable image) or
    a loader worker died or hung: the caller passes the error to RunGuard.at_boundary, so that every process
    stops together. StopIteration passes through."""
    try:
        return next(batches), None
    except ConfigError as error:
        return None, error
    except RuntimeError as error:
        converted = loader_failure(error)
        if converted is None:
            raise
        return None, converted


def loader_failure(error):
    """The one-line ConfigError for a DataLoader worker that died (OOM killer, segfault) or hung, else None."""
    text = " ".join(str(error).split())
    if text.startswith("DataLoader worker") and ("exited unexpectedly" in text or "killed by signal" in text):
        return ConfigError(f"a data-loader worker died ({text.rstrip('. ')}; the out-of-memory killer, or a crash "
                           f"in image decoding): continue with --resume auto and fewer --workers or a smaller "
                           f"--batch-size")
    if text.startswith("DataLoader timed out"):
        return ConfigError(f"a data-loader worker hung ({text.rstrip('. ')}): check the data folder's file system, "
                           f"then continue with --resume auto (fewer --workers if it recurs)")
    return None
