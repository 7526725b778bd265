"""Who runs a store's workers: an exclusive ``flock`` on the store directory itself.

Exactly one process at a time runs a store's jobs (DESIGN.md, "Concurrency across
processes").  Its claim is an exclusive ``flock`` on the store *directory*, opened
read-only.  Unlike a lock file beside the store (the ``owner.lock`` of nbqup before
issue 12), nothing can take it away from a live owner: deleting files in the store --
as temp-file cleaners do -- unlinks names, not the directory the lock is on, and the
kernel releases the lock only when the owner's last descriptor of it closes (when the
process dies, whatever kills it).  A ``fork`` child's copy of the descriptor is closed
in the child, so a forked process never keeps a dead owner's claim alive.  So the claim
cannot be lost while the owner lives, and the workers need not check it before each
batch: they check nothing and lose nothing.  (Moving the store directory away and
putting a copy in its place makes a second store, not a second owner of this one.)

The owner also writes its pid to ``owner.json``, for messages only: that file may be
stale or deleted, so :func:`holder` asks the kernel (``/proc/locks``, by the
directory's device and inode) who holds the lock and uses ``owner.json`` only where the
kernel cannot tell (no ``/proc``), and then only for a live pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import weakref
from pathlib import Path

from .errors import StorePermissionError
from .health import disk_full

__all__ = ["OWNER_FILE", "Ownership", "brief_holder", "holder", "recorded_pid"]

#: The file the owner writes its pid to, for messages (never trusted as the lock).
OWNER_FILE = "owner.json"


class Ownership:
    """This process's claim on running the workers of the store at ``path``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as store:
    ...     a, b = Ownership(store), Ownership(store)
    ...     print(a.acquire(), b.acquire())
    ...     a.release()
    ...     print(b.acquire())
    ...     b.release()
    True False
    True
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._legacy: int | None = None  # the old owner.lock, held too if there is one

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, brief: bool = False) -> bool:
        """Take the lock if no other process (nor another :class:`Ownership` here) holds
        it; True if held now.  Writes ``owner.json`` (saying ``brief`` for a hold of a
        moment, during which a process opening the store waits: see
        :func:`brief_holder`); raises
        :class:`~nbqup.StorePermissionError` naming the path (holding nothing) when the
        store directory cannot be written."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorePermissionError(
                str(self.path), f"cannot open the store directory to lock it ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        legacy = _legacy_lock(self.path)
        if legacy == -1:  # an nbqup from before issue 12 runs this store
            os.close(fd)
            return False
        try:
            _write_pid(self.path, brief)
        except OSError as exc:
            os.close(fd)  # releases the lock: a store we cannot write is not ours to run
            if legacy is not None:
                os.close(legacy)
            full = disk_full(exc, self.path)
            if full is not None:  # no room for the pid file: free some and try again
                raise full from exc
            raise StorePermissionError(
                str(self.path),
                f"cannot run its workers: writing {self.path / OWNER_FILE} failed "
                f"({exc.strerror or exc})",
            ) from exc
        self._fd, self._legacy = fd, legacy
        _held[fd] = self
        return True

    def release(self) -> None:
        """Give the lock up (``owner.json`` stays, naming the last owner)."""
        fd, legacy, self._fd, self._legacy = self._fd, self._legacy, None, None
        if fd is not None:
            _held.pop(fd, None)
            os.close(fd)
        if legacy is not None:
            os.close(legacy)


#: Descriptors held by live Ownership objects in this process (closed in fork children).
_held: weakref.WeakValueDictionary[int, Ownership] = weakref.WeakValueDictionary()


def _forget_in_child() -> None:
    """A ``fork`` child must not keep its parent's claim alive after the parent dies."""
    for own in list(_held.values()):
        for fd in (own._fd, own._legacy):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        own._fd = own._legacy = None
    _held.clear()


def _legacy_lock(path: Path) -> int | None:
    """Lock ``owner.lock``, the lock file of nbqup before issue 12, if the store has one,
    so that an older nbqup still running (or started) beside this one cannot run the
    store too.  Returns its descriptor, None (no such file), or -1 (held elsewhere)."""
    try:
        fd = os.open(path / "owner.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    except OSError:  # a filesystem without flock: the directory lock is what counts
        os.close(fd)
        return None
    return fd


os.register_at_fork(after_in_child=_forget_in_child)


def _write_pid(path: Path, brief: bool) -> None:
    tmp = path / f"{OWNER_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    owner: dict[str, object] = {"pid": os.getpid()}
    if brief:
        owner["brief"] = True
    try:
        os.write(fd, json.dumps(owner).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path / OWNER_FILE)


def recorded_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid the last owner wrote to ``owner.json`` (may be stale: messages only)."""
    try:
        return int(json.loads((Path(path) / OWNER_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def brief_holder(path: str | os.PathLike[str]) -> bool:
    """Whether the owner lock is held for a moment only: by a process that applies the
    requests of a store no process runs (``nbqup cancel``/``retry``), running nothing,
    and lets go within a fraction of a second.  A process opening the store to run it
    waits for that rather than becoming a client."""
    try:
        owner = json.loads((Path(path) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(owner, dict) or owner.get("brief") is not True:
        return False
    return holder(path) == owner.get("pid")


def holder(path: str | os.PathLike[str]) -> int | None:
    """Pid of the live process holding the owner lock of the store at ``path``, or None.

    Read without taking the lock (a probe would make a worker starting at that moment
    refuse the store): ``/proc/locks`` lists every ``flock`` with its holder's pid and the
    locked file's device and inode.  Where ``/proc/locks`` cannot be read, the pid in
    ``owner.json`` is returned if that process is alive.
    """
    recorded = recorded_pid(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return recorded if recorded is not None and alive(recorded) else None
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, not a holder; or a POSIX lock (not ours)
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            dev = (int(major, 16), int(minor, 16))
        except ValueError:
            continue
        # Some filesystems (overlayfs) report another device than stat(): then the
        # inode and the pid the owner recorded must both agree.
        same_dev = dev == (os.major(st.st_dev), os.minor(st.st_dev))
        if int(inode) == st.st_ino and (same_dev or pid == recorded):
            return pid
    return None


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
