"""Repository paths, so that nothing depends on the working directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DATA_SAMPLES = REPO_ROOT / "data_samples"
NOTEBOOKS = REPO_ROOT / "notebooks"
REPORTS = REPO_ROOT / "reports"


def output_dir_for(notebook: str, output_dir: str | Path = "") -> Path:
    """Where a notebook writes summary.json and figures; created if missing.

    Empty means ``reports/<notebook>/`` under the repository root; a relative
    path is taken from the current working directory.
    """
    out = Path(output_dir).expanduser() if str(output_dir) else REPORTS / notebook
    out = out if out.is_absolute() else Path.cwd() / out
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve_existing(value: str | Path) -> Path | None:
    """The existing file ``value`` names, from the working directory first, then the repo root."""
    path = Path(value).expanduser()
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]):
        if candidate.is_file():
            return candidate.resolve()
    return None


def is_sample(path: str | Path) -> bool:
    """True for a file inside ``data_samples/``, the bundled sample runs."""
    return not is_remote(path) and Path(local_path(path)).resolve().is_relative_to(DATA_SAMPLES.resolve())


def url_protocol(value: str | Path) -> str | None:
    """``"https"`` for ``"https://host/f.parquet"``; None for a plain path (``file://`` gives ``"file"``)."""
    head, sep, _ = str(value).strip().partition("://")
    parts = head.lower().split("::")  # chained URLs: "simplecache::s3://bucket/key"
    ok = sep and all(len(p) > 1 and p.replace("+", "").replace("-", "").isalnum() for p in parts)
    return parts[0] if ok else None


def local_path(value: str | Path) -> str | Path:
    """A ``file://`` URL as the plain path it names; anything else unchanged."""
    if url_protocol(value) in ("file", "local"):
        from fsspec.core import url_to_fs

        return url_to_fs(str(value).strip())[1]
    return value


def is_remote(value: str | Path) -> bool:
    """True for an fsspec URL that is not a local file (``https://``, ``s3://``...)."""
    return url_protocol(value) not in (None, "file", "local")
