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


def candidates(value: str | Path) -> list[Path]:
    """Where a path may be: itself when absolute; else the working directory first, then the repository root.

    The one rule for every input path, so that the sample-run defaults work from any directory.
    """
    path = Path(local_path(value)).expanduser()
    return [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]


def locate(value: str | Path, kind: str = "file") -> Path | None:
    """The first of :func:`candidates` that exists as a ``"file"``, a ``"dir"`` or ``"any"``; resolved, or None."""
    test = {"file": Path.is_file, "dir": Path.is_dir, "any": Path.exists}[kind]
    found = next((c for c in candidates(value) if test(c)), None)
    return found.resolve() if found is not None else None


def glob_files(pattern: str | Path) -> list[Path]:
    """Files a glob matches, from the first of :func:`candidates` under which it matches any."""
    import glob

    for base in candidates(pattern):
        found = sorted(glob.glob(str(base)))
        if found:
            return [Path(f).resolve() for f in found if Path(f).is_file()]
    return []


def resolve_existing(value: str | Path) -> Path | None:
    """The existing file ``value`` names (see :func:`locate`)."""
    return locate(value, "file")


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
