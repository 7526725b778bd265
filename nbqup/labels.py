"""What a view calls a job and a store: a row's label, a dashboard's title.

Jobs of one function must be told apart at a glance, and without reading what was
written once (a label never unpickles a payload): :func:`job_label` uses the job's key,
the name it was given, or a short form of its call from the arguments its record keeps
in short form (:func:`args_summary` for the positional ones).  :func:`queue_title` says
where the store is, as short as it can, and whether this process runs it.

>>> from nbqup.records import JobRecord
>>> job_label(JobRecord(id="j", name="train", fn_name="train", created=0.0,
...                     kwargs={"lr": 0.1, "batch": 32}))
'train(lr=0.1, batch=32)'
"""

from __future__ import annotations

import os
from typing import Any

from .records import JobRecord

__all__ = [
    "ARGS_SHOWN",
    "LABEL_CHARS",
    "VALUE_CHARS",
    "args_summary",
    "job_label",
    "one_line",
    "queue_title",
    "short_path",
]

#: Characters of a row's label, and of one argument's value in it.
LABEL_CHARS, VALUE_CHARS = 48, 16
#: Positional arguments a label shows (:func:`args_summary`).
ARGS_SHOWN = 4


def one_line(text: str, limit: int = 120) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return one_line(text, VALUE_CHARS)


def args_summary(args: tuple[Any, ...]) -> tuple[str, ...]:
    """Positional arguments as a label shows them, kept in the record at submit: a small
    number or a short one-line string as its repr, any other value ``"…"`` -- nothing is
    walked, pickled or unpickled for it (the payload holds the arguments); past
    :data:`ARGS_SHOWN` arguments, one ``"…"`` stands for the rest.

    >>> args_summary((3, "a.csv", [1, 2], 0.5))
    ('3', "'a.csv'", '…', '0.5')
    >>> args_summary((1, 2, 3, 4, 5, 6))
    ('1', '2', '3', '4', '…')
    """
    shown = [_cheap(v) for v in args[:ARGS_SHOWN]]
    return (*shown, "…") if len(args) > ARGS_SHOWN else tuple(shown)


def _cheap(value: Any) -> str:
    kind = type(value)
    if (kind is int and -(10**15) < value < 10**15) or kind in (float, bool, type(None)):
        return str(value)
    if kind is str and len(value) <= VALUE_CHARS and value.isprintable():
        return repr(value)
    return "…"


def job_label(rec: JobRecord) -> str:
    """What a row calls a job: its key; else the name it was given (``options(name=)``);
    else a short form of its call, ``train(lr=0.1, batch=32)`` or ``square(3)``, from
    the arguments its record keeps in short form -- ``…`` stands for a positional
    argument only the pickled payload holds (never unpickled for a label).  A long call
    is cut in the middle, keeping its last arguments.  Keys nbqup made
    (``unique=True``, a group's items) say nothing to a reader and are not used.
    """
    key = rec.key if isinstance(rec.key, str) else None
    if key and rec.group is None and not key.startswith("unique:"):
        return one_line(key, LABEL_CHARS)
    fn = str(rec.fn_name or "")
    name = str(rec.name or fn or rec.id)
    if name != fn or not fn:
        return one_line(name, LABEL_CHARS)
    kwargs = rec.kwargs if isinstance(rec.kwargs, dict) else {}
    parts = list(rec.arg_reprs) or (["…"] if rec.has_args and not kwargs else [])
    parts += [f"{k}={_value(v)}" for k, v in kwargs.items()]
    call = f"{fn.rsplit('<locals>.', 1)[-1]}({', '.join(parts)})"
    if len(call) <= LABEL_CHARS:
        return call
    head = LABEL_CHARS // 2  # cut in the middle: the last arguments tell a sweep apart
    return call[:head] + "…" + call[len(call) - (LABEL_CHARS - head - 1) :]


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
