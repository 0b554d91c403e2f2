"""What a run records: the text log (log_train.txt), metrics.jsonl, tensorboard scalars, args.yaml.

Only the main process (rank 0) writes or prints; the other processes get disabled instances.
"""
import json
import os
import re
import sys
import time

import yaml
from termcolor import colored

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
EVENT_FILE_PREFIX = "events.out.tfevents."


class RunLogger:
    """Everything the run prints goes to stdout and, without colour codes, to log_train.txt (as the reference's
    stdout tee): our messages and those of libraries (e.g. a notice of the weights loader).

    Output printed before the run folder exists (it is created only once the data, the model and any checkpoint
    have loaded, so that a failed start leaves nothing behind) is buffered and written on attach(). A disabled
    logger (the processes other than rank 0) prints nothing, and silences print() while started.
    """

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.file = None
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
            self.file.close()
            self.file = None

    # The file-like side, for sys.stdout.
    def write(self, text):
        self.terminal.write(text)
        self.record(ANSI_ESCAPE.sub("", text), newline=False)
        return len(text)

    def flush(self):
        self.terminal.flush()
        if self.file is not None:
            self.file.flush()

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
            self.file.write(text)
        else:
            self.pending.append(text)

    def attach(self, path):
        """Append from now on to path (log_train.txt accumulates over resumes), starting with the buffered output."""
        if not self.enabled:
            return
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

    def drop_after(self, epoch):
        """Forget records of epochs after `epoch`: a resumed run recomputes them (a killed run may have logged
        an evaluation whose checkpoint it never wrote). The file is rewritten atomically."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path, "r", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if _record_epoch(line) <= epoch]
        if len(kept) == len(lines):
            return
        temp = self.path + ".tmp"
        with open(temp, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)

    def append(self, record):
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


def _record_epoch(line):
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0  # a damaged line is kept rather than silently lost


def open_tensorboard(run_dir, start_epoch, enabled=True):
    """A tensorboard writer into run_dir; scalars use step = finished epochs (epoch + 1), as the reference.

    tensorboardX's writer, as the reference: it stores the tag "Train Loss" as "Train_Loss" (it replaces characters
    tensorboard does not allow in tags), so the curves line up with the reference's own event files.

    purge_step hides events of epochs after the checkpoint being resumed (logged by a run that was killed
    before checkpointing them), so that resumed curves have no duplicate points. That works because tensorboard
    reads a folder's event files in name order: each writer gets a new file whose name sorts after every earlier
    one. tensorboardX names files by the second they were opened (and opens them with "wb"), so without a
    suffix a resume within the same second as its killed predecessor's start would overwrite that run's file.
    """
    if not enabled:
        return None
    from tensorboardX import SummaryWriter
    existing = [name for name in os.listdir(run_dir) if name.startswith(EVENT_FILE_PREFIX)] \
        if os.path.isdir(run_dir) else []
    number = len(existing)
    while any(name.endswith(f".{number:04d}") for name in existing):  # never a name in use, even after deletions
        number += 1
    return SummaryWriter(run_dir, purge_step=start_epoch + 1, filename_suffix=f".{number:04d}")


def write_args(path, args):
    """The resolved arguments as YAML (what the run actually used, recipe values included)."""
    values = {key: value for key, value in sorted(vars(args).items()) if key not in ("resolved",)}
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(values, f, default_flow_style=None, sort_keys=True)
