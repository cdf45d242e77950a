"""Regenerating every sample run from the seeded simulators (``workbooks data``, ``make data``).

Every notebook package's ``simulate`` module that defines ``NOTEBOOK`` (the notebook's stem)
and ``write(out_dir) -> list[Path]`` makes that notebook's sample run in
``OUT_DIR/<NOTEBOOK>/``; adding a simulator needs no edit here.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

from helpers.paths import DATA_SAMPLES


def writers() -> dict:
    """{notebook stem: write function}, in notebook order."""
    import helpers

    found = {}
    for info in pkgutil.iter_modules(helpers.__path__):
        if not info.ispkg or info.name == "runner" or importlib.util.find_spec(f"helpers.{info.name}.simulate") is None:
            continue
        module = importlib.import_module(f"helpers.{info.name}.simulate")
        if hasattr(module, "NOTEBOOK") and hasattr(module, "write"):
            found[module.NOTEBOOK] = module.write
    return dict(sorted(found.items()))


def main(out: Path = DATA_SAMPLES) -> list[Path]:
    written = []
    for name, write in writers().items():
        written += write(Path(out) / name)
    return written
