"""The exceptions that end a run and the exit statuses they map to, in one module that every part of the engine
imports (and that imports nothing of the engine), so the modules that raise them and the one that turns them into
an exit status (runtime.run_cli) need not import each other.

ConfigError (lib.errors) stays the blocks' own: a user error, status 2.
"""
import errno
import os
import re

from lib.errors import ConfigError

PREEMPTED_STATUS = 75  # EX_TEMPFAIL of <sysexits.h>: a temporary failure, run the same command again


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint: exit status 75, continue with --resume auto."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run stops, and that step is never checkpointed."""


class WriteFailed(ConfigError):
    """A checkpoint, metrics or log write failed (full disk, I/O error, permissions, read-only file system): the run
    stops with one line (exit status 2, as any input the user has to fix); nothing written before is lost."""


# Errors of a write that the user can fix: a full disk or quota, an I/O error, permissions, a read-only file system.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}
# What torch's zip writer (torch.save, torch.jit.save) raises, as a RuntimeError, when the bytes did not reach the
# file: "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598" on a full disk, "PytorchStreamWriter
# failed writing file ..." on others.
# (Reading errors, "PytorchStreamReader failed ...", come from the same file and are not matched.)
_STREAM_WRITER_FAILURE = re.compile(r"PytorchStreamWriter failed|unexpected pos \d+ vs \d+")
_FULL_BELOW = 1 << 20  # free bytes under which a failed write counts as a full disk (ENOSPC)


def write_error(error, path=None):
    """The OSError that `error` of a write to path means, or None where it is not a failed write (a bug, a bad
    value). Libraries differ: Python's files raise OSError, torch's zip writer a RuntimeError without an errno (its
    errno is then read from the file system: ENOSPC where it is nearly full, else EIO)."""
    if isinstance(error, OSError):
        return error if error.errno in WRITE_ERRNOS else None
    if isinstance(error, RuntimeError) and _STREAM_WRITER_FAILURE.search(str(error)):
        code = errno.ENOSPC if path and _nearly_full(path) else errno.EIO
        return OSError(code, os.strerror(code), path)
    return None


def _nearly_full(path):
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows: the errno stays EIO
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_BELOW


def write_failure(path, error, last_good):
    """The WriteFailed for OSError `error` while writing path: the path, the error, the last good checkpoint."""
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    reason = " ".join(str(error.strerror or error).split()) + (f" ({code})" if code else "")
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
    return WriteFailed(f"cannot write {path}: {reason}; {kept}; free space (or fix the folder's permissions) "
                       f"and continue with --resume auto")
