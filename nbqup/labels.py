"""What a view calls a job and a store: a row's label, a dashboard's title.

Jobs of one function must be told apart at a glance, and without reading what was
written once (a label never unpickles a payload): :func:`job_label` uses the job's key,
the name it was given, or a short form of its call from the keyword arguments its
record keeps.  :func:`queue_title` says where the store is, as short as it can, and
whether this process runs it.

>>> from nbqup.records import JobRecord
>>> job_label(JobRecord(id="j", name="train", fn_name="train", created=0.0,
...                     kwargs={"lr": 0.1, "batch": 32}))
'train(lr=0.1, batch=32)'
"""

from __future__ import annotations

import os
from typing import Any

from .records import JobRecord

__all__ = ["LABEL_CHARS", "VALUE_CHARS", "job_label", "one_line", "queue_title", "short_path"]

#: Characters of a row's label, and of one argument's value in it.
LABEL_CHARS, VALUE_CHARS = 48, 16


def one_line(text: str, limit: int = 120) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return one_line(text, VALUE_CHARS)


def job_label(rec: JobRecord) -> str:
    """What a row calls a job: its key; else the name it was given (``options(name=)``);
    else a short form of its call, ``train(lr=0.1, batch=32)``, from the keyword
    arguments its record keeps in short form -- ``…`` stands for positional arguments,
    which only the pickled payload holds (never unpickled for a label).  Keys nbqup
    made (``unique=True``, a group's items) say nothing to a reader and are not used.
    """
    key = rec.key if isinstance(rec.key, str) else None
    if key and rec.group is None and not key.startswith("unique:"):
        return one_line(key, LABEL_CHARS)
    fn = str(rec.fn_name or "")
    name = str(rec.name or fn or rec.id)
    if name != fn or not fn:
        return one_line(name, LABEL_CHARS)
    kwargs = rec.kwargs if isinstance(rec.kwargs, dict) else {}
    parts = ["…"] if rec.has_args and not kwargs else []
    parts += [f"{k}={_value(v)}" for k, v in kwargs.items()]
    call = f"{fn.rsplit('<locals>.', 1)[-1]}({', '.join(parts)})"
    return call if len(call) <= LABEL_CHARS else call[: LABEL_CHARS - 2] + "…)"


def short_path(path: str | os.PathLike[str] | None, cwd: str | None = None) -> str:
    """A store's path as a dashboard's title shows it: relative to the working directory
    when under it (but not under ``/``), else with the home folder as ``~``;
    ``"memory"`` for no path.

    >>> short_path("/home/ann/exp/.nbqup", cwd="/home/ann/exp")
    '.nbqup'
    >>> short_path(None)
    'memory'
    """
    if path is None:
        return "memory"
    full = os.path.abspath(path)
    try:
        cwd = cwd or os.getcwd()
    except OSError:  # the working directory was deleted
        cwd = None
    root = cwd is None or not cwd.rstrip(os.sep)  # "data/x" for "/data/x" is no shorter
    if not root and cwd and (full == cwd or full.startswith(cwd.rstrip(os.sep) + os.sep)):
        return os.path.relpath(full, cwd)
    home = os.path.expanduser("~")
    if home not in ("", os.sep) and full.startswith(home.rstrip(os.sep) + os.sep):
        return "~" + full[len(home.rstrip(os.sep)) :]
    return full


def queue_title(jq: Any) -> str:
    """``'.nbqup · runs here · 4 workers'``, or ``'.nbqup · client of pid 4242'`` when
    another process runs the store (``'client, not running'`` when none does)."""
    where = short_path(jq.path)
    if jq.is_owner:
        return f"{where} · runs here · {jq.workers} worker{'' if jq.workers == 1 else 's'}"
    try:
        pid = jq.store.owner_pid()
    except Exception:  # a fake or closing store: say what is known
        pid = None
    return f"{where} · client of pid {pid}" if pid else f"{where} · client, not running"
