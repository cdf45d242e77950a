"""``python -m helpers.simulate [OUT_DIR]``: regenerate every sample run (``make data``)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..paths import DATA_SAMPLES
from . import encoder_variance, r2_gap

WRITERS = {
    "01_r2_gap": r2_gap.write,
    "02_encoder_variance": encoder_variance.write,
}


def main(out: Path = DATA_SAMPLES) -> list[Path]:
    written = []
    for name, write in WRITERS.items():
        written += write(Path(out) / name)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_SAMPLES):
        print(f"wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")
