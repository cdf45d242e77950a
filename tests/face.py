"""Drive a notebook's pipeline through the face of its ``diagnosis`` module, as its cells do.

Every ``helpers.<package>.diagnosis`` has the same face (``NOTEBOOK``, ``FINDING_IDS``,
``load_inputs``, ``describe_inputs``, ``diagnose``, ``findings``, ``metrics``), so one function
runs any of the five in-process: tests never copy notebook cells.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from helpers.findings import Finding, Summary, start_output
from helpers.paths import NOTEBOOKS


@cache
def defaults(notebook: str) -> dict[str, Any]:
    """The literal defaults of the notebook's ``parameters`` cell, read with ``ast``."""
    nb = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.AnnAssign)}


@dataclass
class Result:
    params: dict
    run: Any
    banner: str
    diagnosis: Any
    found: dict[str, Finding]
    summary: Summary


def pipeline(dx: ModuleType, write: bool = True, **overrides) -> Result:
    """Load, describe, diagnose, find, measure and (``write``) write summary.json, through the face.

    ``overrides`` replace the notebook's defaults (``run_demos`` is False unless given).
    """
    params = {**defaults(dx.NOTEBOOK), "run_demos": False, **overrides}
    out = start_output(dx.NOTEBOOK, params["output_dir"])
    p, run = dx.load_inputs(params)
    summary = Summary(dx.NOTEBOOK, p, run.dropped)
    banner = dx.describe_inputs(run)
    diagnosis = dx.diagnose(run, p)
    found = {f.id: f for f in dx.findings(diagnosis)}
    assert list(found) == list(dx.FINDING_IDS), "findings() returns every FINDING_IDS entry, in order"
    summary.add(*found.values())
    summary.metrics.update(dx.metrics(diagnosis))
    if write:
        summary.write(out)
    return Result(p, run, banner, diagnosis, found, summary)
