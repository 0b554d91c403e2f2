"""One run per run folder: a lock file that rank 0 holds while the run may write there.

    with RunLock(run_dir):      # ConfigError "run folder X is in use by pid 123 on host h (since ...)" if held
        ...train...

The lock is an flock(2) on <run_dir>/run.lock, which the kernel drops when its holder dies, however it dies
(kill -9 included): a lock of a dead process never blocks. The kernel drops it only once every thread of the holder
has ended, a moment after a kill -9: while the holder (same host) is exiting, acquire() waits for it, up to
EXITING_HOLDER_WAIT seconds, instead of refusing. The file names its holder (pid, host, start time) for the error
message. Where flock is not available (some network filesystems), the holder's pid is checked instead
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
EXITING_HOLDER_WAIT = 10.0  # seconds
SIGKILL_BIT = 1 << 8  # signal 9 in /proc/<pid>/status signal masks

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


def _exiting(pid):
    """True if process pid (on this host) is ending: its main thread has exited (a zombie, its other threads still
    being torn down) or a SIGKILL is pending for it. Linux only (/proc); elsewhere False."""
    try:
        with open(f"/proc/{pid}/stat", "r") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X", "x"):
            return True
        with open(f"/proc/{pid}/status", "r") as f:
            pending = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    except (OSError, IndexError, ValueError):
        return False
    return any(mask & SIGKILL_BIT for mask in pending)


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
        deadline = time.monotonic() + EXITING_HOLDER_WAIT
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._flock(handle):
                os.close(handle)
                holder = _read_holder(self.path)
                if self._holder_exiting(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)  # a killed run's lock goes with its last thread, a moment from now
                    continue
                raise ConfigError(f"run folder {self.run_dir} is in use by {_describe(holder)}: "
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

    @staticmethod
    def _holder_exiting(holder):
        pid = holder.get("pid", "")
        return holder.get("host") == socket.gethostname() and pid.isdigit() and _exiting(int(pid))

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
