"""``python -m helpers.simulate [OUT_DIR]``: regenerate every sample run (``make data``).

Every module of this package that defines ``NOTEBOOK`` (the notebook's stem) and
``write(out_dir) -> list[Path]`` makes that notebook's sample run in
``OUT_DIR/<NOTEBOOK>/``; adding a simulator needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from ..paths import DATA_SAMPLES


def writers() -> dict:
    """{notebook stem: write function}, in notebook order."""
    from .. import simulate

    found = {}
    for info in pkgutil.iter_modules(simulate.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{simulate.__name__}.{info.name}")
        if hasattr(module, "NOTEBOOK") and hasattr(module, "write"):
            found[module.NOTEBOOK] = module.write
    return dict(sorted(found.items()))


def main(out: Path = DATA_SAMPLES) -> list[Path]:
    written = []
    for name, write in writers().items():
        written += write(Path(out) / name)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_SAMPLES):
        print(f"wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")
