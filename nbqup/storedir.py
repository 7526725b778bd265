"""The store directory: created private, kept private, and whose it is.

A store holds pickles, and loading a pickle runs code.  So whoever can write to a
store's directory can run code as every user who opens it.  nbqup therefore

- creates a store directory readable by its owner only (0700; its files 0600);
- tightens an existing store directory (and its ``lmdb`` folder and their files) that
  grants anything to group or others, warning when it was *writable* by them -- and
  refuses the store with :class:`~nbqup.StorePermissionError` when it is writable by
  others and not this user's to tighten;
- warns once per process and store (:class:`~nbqup.StoreOwnerWarning`, naming the
  owner) when the store directory belongs to another user: its pickles were written by
  them and run with your rights.
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
from pathlib import Path

from .errors import StoreOwnerWarning, StorePermissionError

__all__ = ["prepare"]

_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def prepare(path: Path) -> None:
    """Create the store directory ``path`` (owner-only), or check an existing one (see
    the module docstring).  Raises ``NotADirectoryError`` for a file, and
    :class:`~nbqup.StorePermissionError` naming the path when it cannot be created or
    made private."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"store path {path} exists and is not a directory")
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorePermissionError(
            str(path), f"cannot create the store directory ({exc.strerror or exc})"
        ) from exc
    finally:
        os.umask(old)
    st = path.stat()
    if st.st_uid != os.geteuid():
        _warn_foreign(path, st.st_uid)
    _tighten(path)


def _warn_foreign(path: Path, uid: int) -> None:
    with _warned_lock:
        if (str(path), uid) in _warned:
            return
        _warned.add((str(path), uid))
    warnings.warn(
        f"nbqup: store {path} belongs to {_user(uid)}, not to you: its jobs and results "
        "are pickles written by that user, and opening them runs their code with your "
        "rights; only open stores of users you trust",
        StoreOwnerWarning,
        stacklevel=5,  # the line that opened the queue
    )


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _tighten(path: Path) -> None:
    """Drop group and other permissions of the store's directories and files."""
    loosened: list[str] = []
    for item, private in _entries(path):
        try:
            st = item.lstat()
        except OSError:
            continue  # gone meanwhile
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode) or not mode & 0o077:
            continue  # never chmod through a link (it could point anywhere)
        try:
            os.chmod(item, private)
        except OSError as exc:
            if mode & 0o022:
                raise StorePermissionError(
                    str(path),
                    f"{item} is writable by other users (mode {mode:04o}) and cannot be "
                    f"made private ({exc.strerror or exc}): anyone who can write there "
                    "could plant code in the store; refusing it (its owner can run "
                    f"'chmod -R go-rwx {path}')",
                ) from exc
            continue  # readable by others, not ours to change: nothing runs from that
        if mode & 0o022:
            loosened.append(f"{item.name or item} ({mode:04o})")
    if loosened:
        warnings.warn(
            f"nbqup: store {path} was writable by other users ({', '.join(loosened)}); "
            "made private (directories 0700, files 0600)",
            StoreOwnerWarning,
            stacklevel=5,
        )


def _entries(path: Path) -> list[tuple[Path, int]]:
    """The store directory, its ``lmdb`` folder and the files in both, each with the
    mode it should have."""
    out = [(path, 0o700)]
    for folder in (path, path / "lmdb"):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        if folder != path:
            out.append((folder, 0o700))
        out.extend((folder / name, 0o600) for name in names if not (folder / name).is_dir())
    return out
