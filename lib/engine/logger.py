"""What a run records: the text log (log_train.txt), metrics.jsonl, tensorboard scalars, args.yaml.

Only the main process (rank 0) writes or prints; the other processes get disabled instances.
"""
import errno
import json
import os
import re
import sys
import time
from contextlib import contextmanager

import yaml
from termcolor import colored

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
EVENT_FILE_PREFIX = "events.out.tfevents."


@contextmanager
def naming_failures(path):
    """An OSError of a write (e.g. ENOSPC, which names no file) leaves this block naming the file it was for."""
    try:
        yield
    except OSError as error:
        error.filename = error.filename or path
        raise


class RunLogger:
    """Everything the run prints goes to stdout and, without colour codes, to log_train.txt (as the reference's
    stdout tee): our messages and those of libraries (e.g. a notice of the weights loader).

    Output printed before the run folder exists (it is created only once the data, the model and any checkpoint
    have loaded, so that a failed start leaves nothing behind) is buffered and written on attach(). A disabled
    logger (the processes other than rank 0) prints nothing, and silences print() while started.
    """

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.file = self.path = None
        self.pending = []
        self.terminal = None  # the real sys.stdout while started

    def start(self):
        """Route sys.stdout through this logger until close()."""
        self.terminal = sys.stdout
        sys.stdout = self if self.enabled else open(os.devnull, "w")
        return self

    def close(self):
        if self.terminal is not None:
            if not self.enabled:
                sys.stdout.close()
            sys.stdout, self.terminal = self.terminal, None
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:
                pass  # a full disk: the run's one-line error is on stderr; a traceback here would replace it

    # The file-like side, for sys.stdout.
    def write(self, text):
        self.terminal.write(text)
        self.record(ANSI_ESCAPE.sub("", text), newline=False)
        return len(text)

    def flush(self):
        self.terminal.flush()
        if self.file is not None:
            self._to_file(self.file.flush)

    def isatty(self):  # termcolor colours only for a terminal
        return self.terminal.isatty()

    # Messages.
    def info(self, text):
        if self.enabled:
            print(text, flush=True)

    def heading(self, text):
        if self.enabled:
            print(colored(text, "green", attrs=["bold"]), flush=True)

    def warn(self, text):
        if self.enabled:
            print(colored(f"WARNING: {text}", "yellow"), flush=True)

    def record(self, text, newline=True):
        """Into the log file only (e.g. the final error, which goes to stderr)."""
        if not self.enabled:
            return
        text = text + "\n" if newline else text
        if self.file is not None:
            self._to_file(lambda: self.file.write(text))
        else:
            self.pending.append(text)

    def _to_file(self, operation):
        try:
            with naming_failures(self.path):
                operation()
        except OSError:
            self.file = None  # a full disk: nothing more goes there (the failure's one line goes to stderr)
            raise

    def attach(self, path):
        """Append from now on to path (log_train.txt accumulates over resumes), starting with the buffered output."""
        if not self.enabled:
            return
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        self.file.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        self.file.writelines(self.pending)
        self.file.flush()
        self.pending = []


class MetricsFile:
    """metrics.jsonl: one JSON object per evaluation, appended and flushed at once."""

    def __init__(self, path, enabled=True):
        self.path = path
        self.enabled = enabled

    def drop_after(self, step, unit="epoch"):
        """Forget records of steps (unit: "epoch" or "iteration") after `step`: a resumed run recomputes them (a
        killed run may have logged an evaluation whose checkpoint it never wrote). The file is rewritten
        atomically."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path, "r", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if _record_step(line, unit) <= step]
        if len(kept) == len(lines):
            return
        replace_text(self.path, "".join(kept))

    def append(self, record):
        if not self.enabled:
            return
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with naming_failures(self.path):
            append_whole(self.path, line)


def append_whole(path, data):
    """Append the bytes data to path, all or nothing: a full disk leaves no half line for a resumed run to read."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(handle).st_size
        try:
            written = os.write(handle, data)
            if written < len(data):  # a short write is how a nearly full disk ends
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        except OSError:
            os.ftruncate(handle, size)
            raise
    finally:
        os.close(handle)


def _record_step(line, unit):
    try:
        return int(json.loads(line)[unit])
    except (ValueError, KeyError, TypeError):
        return 0  # a damaged line is kept rather than silently lost


class ScalarWriter:
    """Tensorboard scalars, written synchronously: after flush() every point is in the event file, so a kill -9
    right after an epoch's checkpoint loses none of that epoch's points. (tensorboardX's SummaryWriter hands events
    to a background thread, and its flush() does not wait for that thread: the last points could be lost.)

    The records and tags are tensorboardX's: "Train Loss" is stored as "Train_Loss" (tensorboard allows no spaces
    in tags), so the curves line up with the reference's own event files.
    """

    def __init__(self, folder, suffix, purge_step):
        # Imported here: tensorboardX is only needed by a training run's rank 0.
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import scalar
        self._event, self._scalar = Event, scalar
        # A new file events.out.tfevents.<second>.<host><suffix>, starting with its file-version record; the START
        # record makes tensorboard drop earlier points at step >= purge_step (logged by a killed run after its
        # last checkpoint).
        self._writer = EventsWriter(os.path.join(folder, "events"), suffix)
        self._write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def _write(self, event):
        event.wall_time = time.time()
        self._writer.write_event(event)

    def add_scalar(self, tag, value, step):
        with naming_failures(self._writer._file_name):
            self._write(self._event(step=int(step), summary=self._scalar(tag, float(value))))

    def flush(self):
        with naming_failures(self._writer._file_name):
            self._writer.flush()

    def close(self):
        self._writer.close()


def open_tensorboard(run_dir, start_epoch, enabled=True):
    """A tensorboard writer into run_dir; scalars use step = finished epochs (epoch + 1), as the reference.

    The purge step (start_epoch + 1) hides events of epochs after the checkpoint being resumed, logged by a run
    that was killed before checkpointing them, so that resumed curves have no duplicate points. That works
    because tensorboard reads a folder's event files in name order: each writer gets a new file whose name sorts
    after every earlier one. (Files are named by the second they were opened in; a numbered suffix keeps two
    files opened within one second apart, and in order.)
    """
    if not enabled:
        return None
    existing = [name for name in os.listdir(run_dir) if name.startswith(EVENT_FILE_PREFIX)] \
        if os.path.isdir(run_dir) else []
    number = len(existing)
    while any(name.endswith(f".{number:04d}") for name in existing):  # never a name in use, even after deletions
        number += 1
    os.makedirs(run_dir, exist_ok=True)
    return ScalarWriter(run_dir, f".{number:04d}", start_epoch + 1)


def write_args(path, args):
    """The resolved arguments as YAML (what the run actually used, recipe values included)."""
    values = {key: value for key, value in sorted(vars(args).items()) if key not in ("resolved",)}
    replace_text(path, yaml.safe_dump(values, default_flow_style=None, sort_keys=True))


def replace_text(path, text):
    """replace_file with text in UTF-8."""
    replace_file(path, text.encode("utf-8"))


def replace_file(path, data):
    """Write the bytes data as the file path, whole or not at all: a full disk leaves the old file (or none),
    never a truncated one, and no temporary file; the OSError names path."""
    temp = path + ".tmp"
    try:
        with naming_failures(path), open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass  # never created: the write's own error is what counts
        raise
