"""One run per run folder: a lock file that rank 0 holds while the run may write there.

    with RunLock(run_dir):      # ConfigError "run folder X is in use by pid 123 on host h (since ...)" if held
        ...train...

The lock is an flock(2) on <run_dir>/run.lock, which the kernel drops when its holder dies, however it dies
(kill -9 included): a lock of a dead process never blocks. The file names its holder (pid, host, start time) for
the error message. Where flock is not available (some network filesystems), the holder's pid is checked instead
(same host only). A folder the lock had to create is removed again on release if the run left nothing in it, so a
run that fails at its start leaves no trace.
"""
import errno
import os
import socket
import time
import weakref

from lib.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; the pid check alone
    fcntl = None

LOCK_NAME = "run.lock"

# Locks this process holds. A forked child (a DataLoader worker) inherits the lock's file descriptor, and an flock
# lasts while any copy of it is open: without closing the copies in the child, the workers of a killed run would
# keep its folder locked for the seconds they outlive it.
_HELD = weakref.WeakSet()


def _drop_inherited_locks():
    for lock in list(_HELD):
        if lock.handle is not None:
            os.close(lock.handle)  # the child's copy only: the parent keeps its lock
            lock.handle = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path):
    """{'pid': ..., 'host': ..., 'since': ...} from a lock file (empty if unreadable)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            fields = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
    except OSError:
        return {}
    return fields


def _describe(holder):
    if not holder:
        return "another run"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"


def _make_folder(path):
    """os.makedirs(path), returning the folders it created, deepest first (for clean-up)."""
    created = []
    missing = os.path.abspath(path)
    while not os.path.isdir(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create run folder {path}: {error.strerror or error}") from None
    return created


class RunLock:
    """Exclusive hold on a run folder by this process (see the module docstring)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.handle = None
        self.created = []

    def acquire(self):
        self.created = _make_folder(self.run_dir)
        try:
            self._take()
        except BaseException:
            self._remove_created_folders()
            raise
        return self

    def _take(self):
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._flock(handle):
                os.close(handle)
                raise ConfigError(f"run folder {self.run_dir} is in use by {_describe(_read_holder(self.path))}: "
                                  f"wait for that run to end, or choose another --checkpoints name")
            # The previous holder may have removed the file between our open and our flock: then we hold a lock on
            # a file nobody else sees, and must start over.
            try:
                same = os.path.samestat(os.fstat(handle), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(handle)
        text = f"pid={os.getpid()}\nhost={socket.gethostname()}\nsince={time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(handle, 0)
        os.write(handle, text.encode("utf-8"))
        os.fsync(handle)
        self.handle = handle
        _HELD.add(self)

    def _flock(self, handle):
        """True if this process now holds the lock, False if another process does."""
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                # flock unsupported here (ENOLCK, EINVAL...): fall back on the pid check below.
        holder = _read_holder(self.path)
        same_host = holder.get("host") == socket.gethostname()
        pid = int(holder["pid"]) if holder.get("pid", "").isdigit() else None
        return not (same_host and pid is not None and pid != os.getpid() and _pid_alive(pid))

    def release(self):
        if self.handle is None:
            return
        try:
            os.remove(self.path)  # while still holding the lock: nobody else can be using the file
        except FileNotFoundError:
            pass
        os.close(self.handle)  # drops the flock
        self.handle = None
        _HELD.discard(self)
        self._remove_created_folders()

    def _remove_created_folders(self):
        for folder in self.created:  # deepest first; a folder that holds anything stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        self.created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
