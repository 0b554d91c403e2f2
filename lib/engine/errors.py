"""The exceptions that end a run and the exit statuses they map to, in one module that every part of the engine
imports (and that imports nothing of the engine), so the modules that raise them and the one that turns them into
an exit status (runtime.run_cli) need not import each other.

ConfigError (lib.errors) stays the blocks' own: a user error, status 2.
"""
import errno

from lib.errors import ConfigError

PREEMPTED_STATUS = 75  # EX_TEMPFAIL of <sysexits.h>: a temporary failure, run the same command again


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint: exit status 75, continue with --resume auto."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run stops, and that step is never checkpointed."""


class WriteFailed(ConfigError):
    """A checkpoint, metrics or log write failed (full disk, I/O error, permissions, read-only file system): the run
    stops with one line (exit status 2, as any input the user has to fix); nothing written before is lost."""


def write_failure(path, error, last_good):
    """The WriteFailed for OSError `error` while writing path: the path, the error, the last good checkpoint."""
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    reason = " ".join(str(error.strerror or error).split()) + (f" ({code})" if code else "")
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    return WriteFailed(f"cannot write {path}: {reason}; {kept}; free space (or fix the folder's permissions) "
                       f"and continue with --resume auto")
