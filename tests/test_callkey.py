"""The key of a call (nbqup.callkey): what makes notebook code pickle differently from
one kernel session to the next -- a cell's file name, a class's identity, a set's order
-- does not change it; a change of what the code does does.

Code is compiled here as a notebook kernel compiles a cell: in ``__main__``, from a file
named after the kernel's pid.  Separate processes with other hash seeds are in
tests/test_cache.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nbqup.callkey import args_key, call_key


def cell(source: str, pid: int = 100) -> dict[str, Any]:
    """The namespace after running ``source`` as a notebook cell of the kernel ``pid``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, f"/tmp/ipykernel_{pid}/2412.py", "exec"), namespace)
    return namespace


TRAIN = """
LABELS = {"cat", "dog", "bird"}

class Config:
    def __init__(self, lr):
        self.lr = lr

    def scaled(self):
        return self.lr * 2

def train(cfg):
    return sorted(LABELS), cfg.scaled()
"""


def key(ns: dict[str, Any], *args: Any) -> str:
    return call_key(ns["train"], args, {})


def test_a_cell_run_again_or_in_another_kernel_has_the_same_key() -> None:
    first, again, restarted = cell(TRAIN), cell(TRAIN), cell(TRAIN, pid=200)
    assert first["Config"] is not again["Config"]  # a new class each run
    keys = {key(ns, ns["Config"](0.1)) for ns in (first, again, restarted)}
    assert len(keys) == 1


def test_what_the_code_does_changes_the_key() -> None:
    base = key(cell(TRAIN), cell(TRAIN)["Config"](0.1))
    body = cell(TRAIN.replace("cfg.scaled()", "cfg.scaled() + 1"))
    method = cell(TRAIN.replace("self.lr * 2", "self.lr * 3"))
    labels = cell(TRAIN.replace('"bird"}', '"owl"}'))
    assert key(body, body["Config"](0.1)) != base
    assert key(method, method["Config"](0.1)) != base  # a method of the class it is given
    assert key(labels, labels["Config"](0.1)) != base  # a global it reads
    ns = cell(TRAIN)
    assert key(ns, ns["Config"](0.2)) != base  # the argument


def test_a_set_counts_by_its_elements_not_their_order() -> None:
    words = [f"w{i}" for i in range(12)]
    small = set(words)
    grown = set(words + [f"x{i}" for i in range(200)])
    grown -= {f"x{i}" for i in range(200)}  # equal, in a bigger table: another order
    assert small == grown and list(small) != list(grown)
    one, other = cell("def f(x):\n    return x in S\n"), cell("def f(x):\n    return x in S\n")
    one["S"], other["S"] = small, grown
    assert call_key(one["f"], (1,), {}) == call_key(other["f"], (1,), {})
    assert call_key(len, (small,), {}) == call_key(len, (grown,), {})  # an argument
    assert call_key(len, (frozenset(small),), {}) != call_key(len, (small,), {})


def test_recursive_and_self_referring_code_has_a_key() -> None:
    ns = cell(
        "class Node:\n    def clone(self):\n        return Node()\n\n"
        "def depth(n):\n    return 0 if n <= 0 else 1 + depth(n - 1)\n"
    )
    assert call_key(ns["depth"], (ns["Node"](),), {}) == call_key(ns["depth"], (ns["Node"](),), {})


def test_a_set_nested_in_an_argument_counts_by_its_elements() -> None:
    """A set in a list, a dict value, an object's attribute or a dataclass field (and a
    frozenset default in the dataclass's own docstring) is written sorted too."""
    words = [f"w{i}" for i in range(12)]
    small = set(words)
    grown = set(words + [f"x{i}" for i in range(200)])
    grown -= {f"x{i}" for i in range(200)}
    assert list(small) != list(grown)
    source = "import dataclasses\n@dataclasses.dataclass\nclass C:\n    s: frozenset = S\n"
    one: dict[str, Any] = {"__name__": "__main__", "S": frozenset(small)}
    other: dict[str, Any] = {"__name__": "__main__", "S": frozenset(grown)}
    exec(compile(source, "/tmp/ipykernel_100/1.py", "exec"), one)
    exec(compile(source, "/tmp/ipykernel_200/1.py", "exec"), other)
    # the defaults' (and so the docstrings') orders differ in some processes only: a
    # frozenset copied from a set is laid out afresh; the fields given below always do
    for a, b in [
        ([small], [grown]),
        ({"f": small}, {"f": grown}),
        ((1, [{"f": frozenset(small)}]), (1, [{"f": frozenset(grown)}])),
        (SimpleNamespace(s=small), SimpleNamespace(s=grown)),
        (one["C"](), other["C"]()),
        (one["C"](s=small), other["C"](s=grown)),
    ]:
        assert call_key(len, (a,), {}) == call_key(len, (b,), {})
        assert args_key((), {"x": a}) == args_key((), {"x": b})
    assert call_key(len, ([small],), {}) != call_key(len, ([small | {"y"}],), {})


def test_a_fixed_helper_in_the_module_of_a_function_changes_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module function is pickled by reference: its key holds its module's source, so
    fixing a helper it calls (its own source unchanged) changes the key."""
    mod = tmp_path / "keyhelper.py"
    body = "def _loss(x):\n    return x * {}\n\ndef train(x):\n    return _loss(x)\n"
    mod.write_text(body.format(10))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("keyhelper")
    try:
        before = call_key(module.train, (3,), {})
        assert call_key(module.train, (3,), {}) == before
        mod.write_text(body.format(2) + "# fixed\n")  # another size: seen without mtime
        assert call_key(module.train, (3,), {}) != before
    finally:
        sys.modules.pop("keyhelper", None)


def test_a_class_changed_after_a_key_changes_the_next_key() -> None:
    """A class's digest is kept between keys only while its attributes are the same
    objects: a method replaced on the class counts at the next key."""
    ns = cell(TRAIN)
    before = key(ns, ns["Config"](0.1))
    assert key(ns, ns["Config"](0.1)) == before
    ns["Config"].scaled = cell("def scaled(self):\n    return self.lr * 3\n")["scaled"]
    assert key(ns, ns["Config"](0.1)) != before
