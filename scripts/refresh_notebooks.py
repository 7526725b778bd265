"""Store the demo notebooks' outputs again: run each of notebooks/NAME.ipynb in place
with nbclient, as ``jupyter nbconvert --execute --inplace`` would, then tidy what is kept.

- Widget state is stored (``store_widget_state``) but only for the models an output still
  shows: when a notebook closes its queue, nbqup replaces every live view by a static
  snapshot of its final state, so the models of those views are shown nowhere any more.
- No timing metadata in the cells (it would change on every run).
- A path under notebooks/ that a cell printed (``%nbqup open`` says where its store is)
  is kept relative to that folder, so no path of this machine lands in the repository.
- Stores the notebooks make with ``tempfile`` go to /tmp (``TMPDIR=/tmp``).

Run from the repository root, all notebooks or the ones named:

    PYTHONPATH=. .venv/bin/python scripts/refresh_notebooks.py [NAME ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STATE = "application/vnd.jupyter.widget-state+json"
VIEW = "application/vnd.jupyter.widget-view+json"


def _models(obj: Any) -> set[str]:
    """The widget models ``obj`` refers to (``"IPY_MODEL_<id>"`` strings)."""
    if isinstance(obj, str):
        return {obj[len("IPY_MODEL_") :]} if obj.startswith("IPY_MODEL_") else set()
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    return set().union(*map(_models, values))


def _relative(obj: Any, prefix: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, dict):
        return {k: _relative(v, prefix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, prefix) for v in obj]
    return obj


def refresh(name: str) -> None:
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=180,
        store_widget_state=True,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        cell.outputs = nbformat.from_dict(_relative(cell.outputs, f"{NOTEBOOKS}{os.sep}"))
    state = nb.metadata.get("widgets", {}).get(STATE, {}).get("state", {})
    todo = [o.data[VIEW]["model_id"] for c in code for o in c.outputs if VIEW in o.get("data", {})]
    keep: set[str] = set()
    while todo:  # the shown models and every model they refer to
        model = todo.pop()
        if model in state and model not in keep:
            keep.add(model)
            todo += _models(state[model].get("state", {}))
    if keep:
        nb.metadata["widgets"][STATE]["state"] = {k: v for k, v in state.items() if k in keep}
    else:
        nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{name}: {len(state)} widget models, {len(keep)} still shown", flush=True)


if __name__ == "__main__":
    os.environ["TMPDIR"] = "/tmp"  # the kernel inherits it
    names = sys.argv[1:] or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        refresh(name)
