"""Hardening: every notebook's inputs fuzzed with malformed and degenerate files.

Each case derives a file from the bundled sample run (truncated, wrong dtypes, strings in
numeric columns, NaN/inf, negative counts, empty, constant, one row, one class, mismatched
shapes, object arrays, pickled objects, a directory, a missing file) and runs the notebook's
pipeline as its cells do. The outcome must be one of:

- refused: an :class:`InputError` whose message is ONE line naming the parameter, the file
  and the fault in words;
- diagnosed (degenerate but valid data only): the pipeline completes and its findings and
  summary are well-formed (no NaN sneaking into a message, summary.json strict JSON).

Anything else (a traceback from numpy, pandas, sklearn, torch; an assertion; a hang) fails.
A subset runs the real notebooks under papermill: one error line, and no summary.json left
behind, even a stale one from an earlier run. A static check keeps loading pickle-free.
"""

from __future__ import annotations

import ast
import atexit
import json
import re
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from face import Result, pipeline

from helpers.findings import SEVERITIES, STATUSES, Finding, Summary, start_output
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES, PACKAGE_DIR

CASE_SECONDS = 20  # a case that has not ended by then is a hang


class CaseTimeout(BaseException):  # not an Exception: no `except Exception` in the helpers can swallow it
    pass


@contextmanager
def deadline(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"no result within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ============================================================================ expectations
@dataclass(frozen=True)
class Refused:
    """An InputError naming ``param`` and the file ``file`` (a name, or None for a parameter) and matching ``fault``."""

    param: str
    file: str | None
    fault: str  # a regular expression the message must match


@dataclass(frozen=True)
class Diagnosed:
    """Degenerate but valid: the pipeline completes; ``nan_ok`` lists findings whose message may quote a NaN
    the input itself holds (a user's ROC function that returns NaN)."""

    nan_ok: tuple[str, ...] = ()


DIAGNOSED = Diagnosed()


def check_refusal(exc: InputError, expect: Refused) -> None:
    text = str(exc)
    assert "\n" not in text and len(exc._render_traceback_()) == 1, f"not one line: {text!r}"
    assert exc.param == expect.param and text.startswith(f"{expect.param}: "), text
    if expect.file is not None:
        assert exc.file is not None and Path(exc.file).name == expect.file, text
        assert expect.file in text, text
    assert re.search(expect.fault, text), f"fault not stated as {expect.fault!r}: {text}"
    problem = exc.problem
    assert len(re.findall(r"[A-Za-z]{2,}", problem)) >= 3, f"no words in {problem!r}"  # a sentence, not a bare value


def check_diagnosis(summary: Summary, found: list[Finding], expect: Diagnosed) -> None:
    assert found, "no findings"
    for f in found:
        assert isinstance(f, Finding) and f.status in STATUSES and f.severity in SEVERITIES
        assert f.message and "\n" not in f.message
        # a NaN that slipped into a sentence (as Python prints it) is a RuntimeWarning turned into a claim
        if f.id not in expect.nan_ok:
            assert not re.search(r"\b(nan|inf)\b", f.message), f"{f.id}: {f.message}"
    text = json.dumps(summary.to_dict(), allow_nan=False)
    assert json.loads(text)["findings"].keys() == {f.id for f in found}


# ============================================================================ file faults
def truncate(path: Path) -> Path:
    """The first half of the file's bytes, as a crash mid-write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def as_directory(path: Path) -> Path:
    """A directory where the file should be."""
    if path.is_file():
        path.unlink()
    path.mkdir()
    return path


def missing(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def save_table(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, index=False)
    return path


_CLEAN: dict[str, Path] = {}  # each clean input file, written once per worker


def clean_copy(name: str, write: Callable[[Path], object], d: Path) -> Path:
    """``d / name``: a copy of the clean file that ``write(path)`` writes, written once per worker (the
    bases are rebuilt for every case; copying bytes costs a tenth of writing a parquet file again)."""
    if name not in _CLEAN:
        folder = Path(tempfile.mkdtemp(prefix="hardening-clean-"))
        atexit.register(shutil.rmtree, folder, True)
        write(folder / name)
        _CLEAN[name] = folder / name
    return Path(shutil.copy(_CLEAN[name], d / name))


def _stale_summary(out: Path) -> None:
    """A summary.json an earlier run left in the output directory."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"notebook": "an earlier run", "findings": {}}))


UNPICKLED = []


def _mark_unpickled():  # what unpickling the object below would call
    UNPICKLED.append(True)
    return {}


class PickledConfig:
    """A custom object in a checkpoint: torch.load(weights_only=True) must refuse it, never run it."""

    def __reduce__(self):
        return (_mark_unpickled, ())


# ============================================================================ sample data, small
@cache
def t01() -> pd.DataFrame:
    return pd.read_parquet(DATA_SAMPLES / "01_r2_gap" / "predictions.parquet")


@cache
def a02(name: str) -> dict:
    with np.load(DATA_SAMPLES / "02_encoder_variance" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def a03(name: str) -> dict:
    with np.load(DATA_SAMPLES / "03_checkpoint_divergence" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def s04() -> pd.DataFrame:
    """Three epochs of the sample's scores (first, middle, last), every 32nd row: both classes, ties kept."""
    df = pd.read_parquet(DATA_SAMPLES / "04_roc_collapse" / "scores.parquet")
    epochs = sorted(df["epoch"].unique())
    keep = df["epoch"].isin([epochs[0], epochs[len(epochs) // 2], epochs[-1]]) & (df["sample_id"] % 32 == 0)
    return df[keep].reset_index(drop=True)


@cache
def i04() -> pd.DataFrame:
    """The sample's loader log for one sample_id in 32, each with every one of its rows (epochs, ranks,
    workers): the duplication the audit measures is kept, at a 32nd of the rows to read."""
    df = pd.read_parquet(DATA_SAMPLES / "04_roc_collapse" / "seen_ids.parquet")
    return df[df["sample_id"].isin(np.unique(df["sample_id"])[::32])].reset_index(drop=True)


@cache
def s05() -> pd.DataFrame:
    """The sample's samples, every 20th parent with all its copies."""
    df = pd.read_parquet(DATA_SAMPLES / "05_augmentation_leakage" / "samples.parquet")
    return df[df["parent_id"] % 20 == 0].reset_index(drop=True)


# ============================================================================ pipelines, through the face
# Each notebook's pipeline runs through its diagnosis face (tests/face.py), then the public
# functions its display cells call on the diagnosis: those must not crash on degenerate data either.
def _cells_01(r: Result) -> None:
    from helpers.r2_gap import diagnosis as dx

    r.diagnosis.headline.rename("pooled, duplicates removed").to_frame()
    r.diagnosis.reconciliation.fillna({"session": "overall"})
    dx.repeated_samples(r.run.table).head(10)
    dx.gap_account(r.diagnosis)


def _cells_02(r: Result) -> None:
    from helpers.encoder_variance import diagnosis as dx

    dx.decomposition_table(r.diagnosis.main), dx.source_comparison(r.diagnosis.main)
    dx.compare_runs(r.diagnosis.measured)


def _cells_03(r: Result) -> None:
    from helpers.checkpoint_divergence import diagnosis as dx

    dx.checkpoint_table(r.diagnosis)


def _cells_04(r: Result) -> None:
    from helpers.roc_collapse import diagnosis as dx

    dx.cliff_table(r.diagnosis, r.run.history), dx.wide_values(r.diagnosis)
    cliff = r.found["score_saturation_ties"].evidence["predicted_cliff_epoch"]
    next((e for e in cliff.values() if e is not None), r.diagnosis.epochs[-1])


def _cells_05(r: Result) -> None:
    from helpers.augmentation_leakage import diagnosis as dx

    if r.diagnosis.degradation is not None:
        dx.group_table(r.diagnosis)


def _through_the_face(package: str, cells) -> Callable[[dict], tuple[Summary, list[Finding]]]:
    def run(params: dict) -> tuple[Summary, list[Finding]]:
        import importlib

        r = pipeline(importlib.import_module(f"helpers.{package}.diagnosis"), **params)
        cells(r)
        return r.summary, list(r.found.values())
    return run


PIPELINES = {"01": _through_the_face("r2_gap", _cells_01), "02": _through_the_face("encoder_variance", _cells_02),
             "03": _through_the_face("checkpoint_divergence", _cells_03),
             "04": _through_the_face("roc_collapse", _cells_04),
             "05": _through_the_face("augmentation_leakage", _cells_05)}


# ============================================================================ clean inputs in a tmp dir
# Every input is a copy outside data_samples/, so no "mixed with the bundled sample" refusal interferes.
def base_01(d: Path) -> dict:
    clean_copy("predictions.parquet", lambda p: save_table(t01(), p), d)
    shutil.copy(DATA_SAMPLES / "01_r2_gap" / "reported.json", d / "reported.json")
    return dict(predictions=str(d / "predictions.parquet"), reported=str(d / "reported.json"), multioutput="flat",
                tolerance=1e-4, n_bootstrap=50, lab_world_size=4, output_dir=str(d / "out"), run_demos=False, seed=0)


def base_02(d: Path) -> dict:
    clean_copy("embeddings.npz", lambda p: np.savez(p, **a02("collapsed_variational")), d)
    clean_copy("other.npz", lambda p: np.savez(p, **a02("deterministic")), d)
    return dict(embeddings=str(d / "embeddings.npz"), compare=[str(d / "other.npz")], output_dir=str(d / "out"),
                run_demos=False, seed=0)


def base_03(d: Path) -> dict:
    clean_copy("checkpoints.npz", lambda p: np.savez(p, **a03("checkpoints")), d)
    return dict(checkpoints=str(d / "checkpoints.npz"), forward_model="", checkpoint_files="", model_factory="",
                validation="", last_k=3, k_neighbours=5, callable_timeout=60.0, output_dir=str(d / "out"), run_demos=False, seed=0)


def base_03_files(d: Path) -> dict:
    """The checkpoint-files route: four of the sample's checkpoints and its validation npz."""
    (d / "ckpt").mkdir()
    for i in (7, 14, 21, 28):
        shutil.copy(DATA_SAMPLES / "03_checkpoint_divergence" / "checkpoints" / f"epoch_{i:02d}.pt",
                    d / "ckpt" / f"epoch_{i:02d}.pt")
    clean_copy("validation.npz", lambda p: np.savez(p, **a03("validation")), d)
    return dict(checkpoints="", forward_model="", checkpoint_files=str(d / "ckpt" / "*.pt"),
                model_factory="helpers.checkpoint_divergence.lab:make_model", validation=str(d / "validation.npz"),
                last_k=3, k_neighbours=5, callable_timeout=60.0, output_dir=str(d / "out"), run_demos=False, seed=0)


def base_04(d: Path) -> dict:
    clean_copy("scores.parquet", lambda p: save_table(s04(), p), d)
    shutil.copy(DATA_SAMPLES / "04_roc_collapse" / "history.json", d / "history.json")
    clean_copy("seen_ids.parquet", lambda p: save_table(i04(), p), d)
    shutil.copy(DATA_SAMPLES / "04_roc_collapse" / "roc_naive.py", d / "roc_naive.py")
    return dict(history=str(d / "history.json"), scores=str(d / "scores.parquet"), fpr_targets=[1e-4, 1e-3],
                tpr_targets=[0.5, 0.85], seen_ids=str(d / "seen_ids.parquet"),
                roc_function=f"{d / 'roc_naive.py'}:roc", n_bootstrap=100, callable_timeout=60.0, output_dir=str(d / "out"),
                run_demos=False, seed=0)


def base_05(d: Path) -> dict:
    clean_copy("samples.parquet", lambda p: save_table(s05(), p), d)
    for f in ("declared_copies.json", "group_metrics.csv"):
        shutil.copy(DATA_SAMPLES / "05_augmentation_leakage" / f, d / f)
    return dict(samples=str(d / "samples.parquet"), feature_columns=[], declared_copies=str(d / "declared_copies.json"),
                group_metrics=str(d / "group_metrics.csv"), baseline_run="baseline", train_loss=0.02,
                val_loss=0.025, output_dir=str(d / "out"), run_demos=False, seed=0)


BASES = {"01": base_01, "02": base_02, "03": base_03, "03f": base_03_files, "04": base_04, "05": base_05}


# ============================================================================ the matrix
@dataclass(frozen=True)
class Case:
    notebook: str  # key of BASES; the pipeline is its first two characters
    name: str
    make: Callable[[Path, dict], dict | None]  # (tmp dir, clean params) -> parameter overrides
    expect: Refused | Diagnosed


CASES: list[Case] = []


def case(notebook: str, name: str, expect: Refused | Diagnosed):
    def register(make):
        CASES.append(Case(notebook, name, make, expect))
        return make
    return register


def edit_table(param: str, fn: Callable[[pd.DataFrame], pd.DataFrame], suffix: str | None = None):
    """A maker that rewrites the table ``param`` names (optionally in another format)."""
    def make(d: Path, p: dict) -> dict:
        path = Path(p[param])
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        out = path.with_suffix(suffix) if suffix else path
        save_table(fn(df), out)
        return {param: str(out)}
    return make


def edit_npz(param: str, fn: Callable[[dict], dict]):
    def make(d: Path, p: dict) -> dict:
        path = Path(p[param][0] if param == "compare" else p[param])
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(path, **fn(arrays))
        return {}
    return make


def file_fault(param: str, fault: Callable[[Path], Path], index: int | None = None):
    def make(d: Path, p: dict) -> dict:
        value = p[param][index] if index is not None else p[param]
        fault(Path(value))
        return {}
    return make


def write_text(param: str, text: str | bytes):
    def make(d: Path, p: dict) -> dict:
        path = Path(p[param])
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return {}
    return make


# ---------------------------------------------------------------------------- 01: predictions, reported
P, R = "predictions.parquet", "reported.json"
case("01", "truncated parquet", Refused("predictions", P, "cannot be read as a table"))(file_fault("predictions", truncate))
case("01", "directory", Refused("predictions", P, "is a directory"))(file_fault("predictions", as_directory))
case("01", "missing file", Refused("predictions", P, "file not found"))(file_fault("predictions", missing))
case("01", "strings in y_true", Refused("predictions", P, "'y_true' must be numeric"))(
    edit_table("predictions", lambda t: t.assign(y_true=t["y_true"].map("{:.3f}".format))))
case("01", "a word in y_pred (csv)", Refused("predictions", "predictions.csv", "'y_pred' must be numeric"))(
    edit_table("predictions", lambda t: t.assign(y_pred=t["y_pred"].astype(object).where(t.index != 3, "n.a.")), ".csv"))
case("01", "NaN in y_pred", Refused("predictions", P, r"'y_pred' has 1 NaN/inf"))(
    edit_table("predictions", lambda t: t.assign(y_pred=t["y_pred"].where(t.index != 7, np.nan))))
case("01", "inf in y_true", Refused("predictions", P, r"'y_true' has 1 NaN/inf"))(
    edit_table("predictions", lambda t: t.assign(y_true=t["y_true"].where(t.index != 7, np.inf))))
case("01", "fractional rank", Refused("predictions", P, "'rank' must hold integers"))(
    edit_table("predictions", lambda t: t.assign(rank=t["rank"] + 0.5)))
case("01", "strings in batch", Refused("predictions", P, "'batch' must be numeric"))(
    edit_table("predictions", lambda t: t.assign(batch=t["batch"].astype(str))))
case("01", "negative rank", Refused("predictions", P, "'rank' must be >= 0"))(
    edit_table("predictions", lambda t: t.assign(rank=t["rank"] - 1)))
case("01", "negative batch", Refused("predictions", P, "'batch' must be >= 0"))(
    edit_table("predictions", lambda t: t.assign(batch=t["batch"].where(t.index != 0, -3))))
case("01", "missing session", Refused("predictions", P, "'session' has 1 missing"))(
    edit_table("predictions", lambda t: t.assign(session=t["session"].astype(float).where(t.index != 0, np.nan))))
case("01", "empty table", Refused("predictions", P, "no rows"))(edit_table("predictions", lambda t: t.iloc[:0]))
case("01", "no y_pred column", Refused("predictions", P, "missing required column 'y_pred'"))(
    edit_table("predictions", lambda t: t.drop(columns="y_pred")))
case("01", "constant target", Refused("predictions", P, "'y_true' is constant"))(
    edit_table("predictions", lambda t: t.assign(y_true=1.5)))
case("01", "one row", Refused("predictions", P, "has 1 row"))(edit_table("predictions", lambda t: t.iloc[:1]))
case("01", "two rows", DIAGNOSED)(
    lambda d, p: {**edit_table("predictions", lambda t: t.iloc[[0, 5]])(d, p), "reported": ""})
case("01", "one session", DIAGNOSED)(
    lambda d, p: {**edit_table("predictions", lambda t: t.assign(session=7))(d, p), "reported": ""})
case("01", "one rank, one batch, one channel", DIAGNOSED)(
    lambda d, p: {**edit_table("predictions", lambda t: t[t["channel"] == 0].assign(rank=0, batch=0))(d, p),
                  "reported": ""})
case("01", "constant predictions", DIAGNOSED)(edit_table("predictions", lambda t: t.assign(y_pred=0.25)))
case("01", "perfect predictions", DIAGNOSED)(edit_table("predictions", lambda t: t.assign(y_pred=t["y_true"])))
case("01", "constant target within each session", DIAGNOSED)(
    lambda d, p: {**edit_table("predictions", lambda t: t.assign(y_true=t["session"].astype(float) - 160819))(d, p),
                  "reported": ""})
case("01", "every row repeated (all padding)", DIAGNOSED)(
    edit_table("predictions", lambda t: pd.concat([t, t.assign(rank=t["rank"] + 4)], ignore_index=True)))
case("01", "ragged channels", DIAGNOSED)(
    edit_table("predictions", lambda t: t[~((t["channel"] == 2) & (t["sample_id"] % 3 == 0))]))
case("01", "wrong suffix", Refused("predictions", "predictions.txt", "unsupported file type"))(
    lambda d, p: {"predictions": str(Path(p["predictions"]).rename(d / "predictions.txt"))})
case("01", "reported truncated", Refused("reported", R, "not valid JSON"))(file_fault("reported", truncate))
case("01", "reported binary junk", Refused("reported", R, "not valid JSON"))(write_text("reported", b"\xff\xfe\x00\x81"))
case("01", "reported directory", Refused("reported", R, "is a directory"))(file_fault("reported", as_directory))
case("01", "reported missing", Refused("reported", R, "file not found"))(file_fault("reported", missing))
case("01", "reported a list", Refused("reported", R, "expected a JSON object"))(write_text("reported", "[0.5, 0.7]"))
case("01", "reported r2 a word", Refused("reported", R, "'r2' must be a (finite )?number"))(write_text("reported", '{"r2": "high"}'))
case("01", "reported r2 NaN", Refused("reported", R, "'r2' must be a number"))(write_text("reported", '{"r2": NaN}'))
case("01", "reported r2 overflow", Refused("reported", R, "'r2' must be a finite number"))(
    write_text("reported", '{"r2": 1e999}'))
case("01", "reported r2 bool", Refused("reported", R, "'r2' must be a number"))(write_text("reported", '{"r2": true}'))
case("01", "reported per_session a list", Refused("reported", R, "'per_session' must be an object"))(
    write_text("reported", '{"per_session": [0.1]}'))
case("01", "reported unknown session", Refused("reported", R, "session '999' that is not in the predictions"))(
    write_text("reported", '{"per_session": {"999": {"r2": 0.1}}}'))
case("01", "reported session entry not an object", Refused("reported", R, r"per_session\['160819'\] must be an object"))(
    write_text("reported", '{"per_session": {"160819": 0.1}}'))
case("01", "reported empty object", DIAGNOSED)(write_text("reported", "{}"))

# ---------------------------------------------------------------------------- 02: embeddings, compare
E, OTHER = "embeddings.npz", "other.npz"
case("02", "truncated npz", Refused("embeddings", E, "cannot be read as .npz"))(file_fault("embeddings", truncate))
case("02", "directory", Refused("embeddings", E, "is a directory"))(file_fault("embeddings", as_directory))
case("02", "missing file", Refused("embeddings", E, "file not found"))(file_fault("embeddings", missing))
case("02", "object array", Refused("embeddings", E, "object array"))(
    edit_npz("embeddings", lambda a: {**a, "group": a["group"].astype(object)}))
case("02", "strings in z", Refused("embeddings", E, "'z' must be numeric"))(
    edit_npz("embeddings", lambda a: {**a, "z": a["z"].astype(str)}))
case("02", "complex z", Refused("embeddings", E, "'z' must be numeric"))(
    edit_npz("embeddings", lambda a: {**a, "z": a["z"].astype(complex)}))
case("02", "NaN in z", Refused("embeddings", E, "'z' has 1 NaN/inf"))(
    edit_npz("embeddings", lambda a: {**a, "z": np.where(np.arange(a["z"].size).reshape(a["z"].shape) == 5, np.nan, a["z"])}))
case("02", "inf in z_samples", Refused("embeddings", E, "'z_samples' has .* NaN/inf"))(
    edit_npz("embeddings", lambda a: {**a, "z_samples": a["z_samples"] * np.float32(np.inf)}))
case("02", "z one-dimensional", Refused("embeddings", E, "'z' has shape"))(
    edit_npz("embeddings", lambda a: {**a, "z": a["z"][:, 0]}))
case("02", "empty z", Refused("embeddings", E, "'z' is empty"))(
    edit_npz("embeddings", lambda a: {**a, "z": a["z"][:0]}))
case("02", "group shorter than z", Refused("embeddings", E, "'group' has shape"))(
    edit_npz("embeddings", lambda a: {**a, "group": a["group"][:-1]}))
case("02", "z_samples of other rows", Refused("embeddings", E, "'z_samples' has shape"))(
    edit_npz("embeddings", lambda a: {**a, "z_samples": a["z_samples"][:-3]}))
case("02", "one pass in z_samples", Refused("embeddings", E, "R >= 2"))(
    edit_npz("embeddings", lambda a: {**a, "z_samples": a["z_samples"][:, :1]}))
case("02", "logvar of another width", Refused("embeddings", E, "'logvar' has shape"))(
    edit_npz("embeddings", lambda a: {**a, "logvar": a["logvar"][:, :-1]}))
case("02", "no group array", Refused("embeddings", E, "missing required array 'group'"))(
    edit_npz("embeddings", lambda a: {k: v for k, v in a.items() if k != "group"}))
case("02", "one class", Refused("embeddings", E, "at least 2 puzzles"))(
    edit_npz("embeddings", lambda a: {**a, "group": np.zeros_like(a["group"])}))
case("02", "one row", Refused("embeddings", E, "at least 2 rows"))(
    edit_npz("embeddings", lambda a: {k: v[:1] for k, v in a.items()}))
case("02", "two rows, two puzzles", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {**{k: v[:2] for k, v in a.items()}, "group": np.array([0, 1])}))
case("02", "constant embeddings, sampled", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {k: (np.zeros_like(v) if k != "group" else v) for k, v in a.items()}))
case("02", "constant embeddings, deterministic", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {"z": np.ones_like(a["z"]), "group": a["group"]}))
case("02", "every puzzle one row", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {**a, "group": np.arange(len(a["group"]))}))
case("02", "one unit", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {"z": a["z"][:, :1], "group": a["group"], "logvar": a["logvar"][:, :1],
                                      "z_samples": a["z_samples"][:, :, :1]}))
case("02", "string puzzle ids, 3-D z", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {"z": a["z"].reshape(len(a["z"]), 4, 8), "group": a["group"].astype(str)}))
case("02", "float64 values whose squares overflow", Refused("embeddings", E, "'z' has values as large as .* overflow float64"))(
    edit_npz("embeddings", lambda a: {"z": a["z"].astype(np.float64) * 1e200, "group": a["group"]}))
case("02", "float32 values whose squares overflow", Refused("embeddings", E, "'z' has values as large as .* float32"))(
    edit_npz("embeddings", lambda a: {"z": a["z"] * np.float32(1e20), "group": a["group"]}))
case("02", "large but summable float32 values", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {**a, "z": a["z"] * np.float32(1e15), "z_samples": a["z_samples"] * np.float32(1e15)}))
case("02", "logvar whose exp overflows", Refused("embeddings", E, "'logvar' has values up to .* overflows"))(
    edit_npz("embeddings", lambda a: {**a, "logvar": a["logvar"] + 800}))
case("02", "logvar whose exp underflows", DIAGNOSED)(
    edit_npz("embeddings", lambda a: {**a, "logvar": a["logvar"] - 1600}))
case("02", "compare truncated", Refused("compare[0]", OTHER, "cannot be read as .npz"))(file_fault("compare", truncate, 0))
case("02", "compare directory", Refused("compare[0]", OTHER, "is a directory"))(file_fault("compare", as_directory, 0))
case("02", "compare missing", Refused("compare[0]", OTHER, "file not found"))(file_fault("compare", missing, 0))
case("02", "compare one class", Refused("compare[0]", OTHER, "at least 2 puzzles"))(
    edit_npz("compare", lambda a: {**a, "group": np.full(len(a["group"]), 3)}))
case("02", "compare another width", DIAGNOSED)(edit_npz("compare", lambda a: {**a, "z": a["z"][:, :5]}))

# ---------------------------------------------------------------------------- 03: checkpoints npz
C = "checkpoints.npz"
case("03", "truncated npz", Refused("checkpoints", C, "cannot be read as .npz"))(file_fault("checkpoints", truncate))
case("03", "directory", Refused("checkpoints", C, "is a directory"))(file_fault("checkpoints", as_directory))
case("03", "missing file", Refused("checkpoints", C, "file not found"))(file_fault("checkpoints", missing))
case("03", "object array", Refused("checkpoints", C, "object array"))(
    edit_npz("checkpoints", lambda a: {**a, "param_names": a["param_names"].astype(object)}))
case("03", "strings in pred", Refused("checkpoints", C, "'pred' must be numeric"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": a["pred"].astype(str)}))
case("03", "NaN in pred", Refused("checkpoints", C, "'pred' has 1 NaN/inf"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": np.where(np.arange(a["pred"].size).reshape(a["pred"].shape) == 9,
                                                             np.nan, a["pred"])}))
case("03", "inf in val_loss", Refused("checkpoints", C, "'val_loss' has 1 NaN/inf"))(
    edit_npz("checkpoints", lambda a: {**a, "val_loss": np.r_[np.inf, a["val_loss"][1:]]}))
case("03", "pred two-dimensional", Refused("checkpoints", C, "'pred' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": a["pred"][0]}))
case("03", "empty pred", Refused("checkpoints", C, "'pred' is empty"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": a["pred"][:0]}))
case("03", "one checkpoint", Refused("checkpoints", C, "1 checkpoint; need at least 2"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": a["pred"][:1], "epoch": a["epoch"][:1],
                                       "val_loss": a["val_loss"][:1], "experiment_pred": a["experiment_pred"][:1]}))
case("03", "one validation sample", Refused("checkpoints", C, "1 validation samples; need at least 8"))(
    edit_npz("checkpoints", lambda a: {**a, "pred": a["pred"][:, :1], "target": a["target"][:1],
                                       "repeat_id": a["repeat_id"][:1]}))
case("03", "target of other samples", Refused("checkpoints", C, "'target' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "target": a["target"][:-1]}))
case("03", "epoch shorter than pred", Refused("checkpoints", C, "'epoch' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "epoch": a["epoch"][:-1]}))
case("03", "repeated epoch", Refused("checkpoints", C, "repeats an epoch"))(
    edit_npz("checkpoints", lambda a: {**a, "epoch": np.r_[a["epoch"][:1], a["epoch"][:-1]]}))
case("03", "fractional epoch", Refused("checkpoints", C, "'epoch' must hold integers"))(
    edit_npz("checkpoints", lambda a: {**a, "epoch": a["epoch"] + 0.5}))
case("03", "negative epoch", Refused("checkpoints", C, "'epoch' must be >= 0"))(
    edit_npz("checkpoints", lambda a: {**a, "epoch": a["epoch"] - 5}))
case("03", "train_target of other parameters", Refused("checkpoints", C, "'train_target' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "train_target": a["train_target"][:, :-1]}))
case("03", "experiment_pred of other checkpoints", Refused("checkpoints", C, "'experiment_pred' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "experiment_pred": a["experiment_pred"][:-1]}))
case("03", "experiment_target of other parameters", Refused("checkpoints", C, "'experiment_target' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "experiment_target": a["experiment_target"][:-1]}))
case("03", "experiment_curve two-dimensional", Refused("checkpoints", C, "'experiment_curve' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "experiment_curve": a["experiment_curve"].reshape(8, -1)}))
case("03", "param_names of other parameters", Refused("checkpoints", C, "'param_names' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "param_names": a["param_names"][:-1]}))
case("03", "repeat_id of other samples", Refused("checkpoints", C, "'repeat_id' has shape"))(
    edit_npz("checkpoints", lambda a: {**a, "repeat_id": a["repeat_id"][:-2]}))
case("03", "last_k above the checkpoints", Refused("last_k", None, "at most the number of checkpoints"))(
    lambda d, p: {"last_k": 31})
case("03", "k_neighbours above the samples", Refused("k_neighbours", None, "below the number of validation"))(
    lambda d, p: {**edit_npz("checkpoints", lambda a: {k: (v[:, :10] if k == "pred" else v[:10]
                                                            if k in ("target", "repeat_id") else v)
                                                        for k, v in a.items()})(d, p), "k_neighbours": 10})
case("03", "required arrays only", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {k: a[k] for k in ("pred", "target", "epoch", "val_loss")}))
case("03", "constant target", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {**a, "target": np.ones_like(a["target"]),
                                       "train_target": np.ones_like(a["train_target"])}))
case("03", "one constant parameter", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {**a, "target": np.c_[a["target"][:, :-1], np.zeros(len(a["target"]))],
                                       "train_target": np.c_[a["train_target"][:, :-1],
                                                             np.zeros(len(a["train_target"]))]}))
case("03", "identical checkpoints", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {**a, "pred": np.repeat(a["pred"][:1], len(a["pred"]), 0),
                                       "experiment_pred": np.repeat(a["experiment_pred"][:1], len(a["pred"]), 0),
                                       "val_loss": np.full(len(a["pred"]), 0.5)}))
case("03", "perfect predictions", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {**a, "pred": np.repeat(a["target"][None], len(a["pred"]), 0),
                                       "experiment_pred": np.repeat(a["experiment_target"][None], len(a["pred"]), 0)}))
case("03", "experiment in the training set's only point", DIAGNOSED)(
    edit_npz("checkpoints", lambda a: {**a, "train_target": np.repeat(a["experiment_target"][None], 8, 0)}))
case("03", "two checkpoints, eight samples", DIAGNOSED)(
    lambda d, p: {**edit_npz("checkpoints", lambda a: {
        "pred": a["pred"][:2, :8], "target": a["target"][:8], "epoch": a["epoch"][:2], "val_loss": a["val_loss"][:2],
        "experiment_pred": a["experiment_pred"][:2], "experiment_target": a["experiment_target"],
        "train_target": a["train_target"][:8], "repeat_id": np.array([0, 0, 1, 1, 2, 2, 3, 3])})(d, p),
        "last_k": 2, "k_neighbours": 3})



def forward_model(code: str = ""):
    """A cheap forward model (7 parameters -> 96-point curves, like the sample's) in a file of the tmp dir."""
    def make(d: Path, p: dict) -> dict:
        (d / "fwd.py").write_text(
            "import torch\nW = torch.linspace(-1, 1, 7 * 96, dtype=torch.float64).reshape(7, 96)\n"
            "def forward(p):\n    return torch.sin(torch.as_tensor(p, dtype=torch.float64) @ W)\n" + code)
        return {"forward_model": f"{d / 'fwd.py'}:forward"}
    return make


def with_forward(make_arrays, code: str = ""):
    return lambda d, p: {**(make_arrays(d, p) or {}), **forward_model(code)(d, p)}


case("03", "forward model, constant target", DIAGNOSED)(with_forward(
    edit_npz("checkpoints", lambda a: {**a, "target": np.ones_like(a["target"]),
                                       "train_target": np.ones_like(a["train_target"])})))
case("03", "forward model, perfect predictions", DIAGNOSED)(with_forward(
    edit_npz("checkpoints", lambda a: {**a, "pred": np.repeat(a["target"][None], len(a["pred"]), 0),
                                       "experiment_pred": np.repeat(a["experiment_target"][None], len(a["pred"]), 0)})))
case("03", "forward model, experiment in curve space only", DIAGNOSED)(with_forward(
    edit_npz("checkpoints", lambda a: {k: v for k, v in a.items() if k not in ("experiment_target", "train_target")})))
case("03", "forward model raises", Refused("forward_model", None, "failed on two validation targets"))(
    with_forward(lambda d, p: {}, "def forward(p):\n    raise RuntimeError('no GPU')\n"))
case("03", "forward model returns NaN", Refused("forward_model", None, "finite"))(
    with_forward(lambda d, p: {}, "def forward(p):\n    return torch.full((len(p), 96), float('nan'))\n"))
case("03", "forward model curves of another length", Refused("forward_model", None, "'experiment_curve' has 96"))(
    with_forward(lambda d, p: {}, "def forward(p):\n    return torch.zeros((len(p), 50))\n"))
case("03", "forward model file missing", Refused("forward_model", "nofwd.py", "file not found"))(
    lambda d, p: {"forward_model": f"{d / 'nofwd.py'}:forward"})

# ---------------------------------------------------------------------------- 03: checkpoint files, validation
V = "validation.npz"


def checkpoint_fault(fn: Callable[[Path], None], index: int = 1):
    def make(d: Path, p: dict) -> dict:
        fn(sorted((d / "ckpt").glob("*.pt"))[index])
        return {}
    return make


def _torch_save(path: Path, fn: Callable[[dict], object]) -> None:
    import torch

    obj = torch.load(path, weights_only=True)
    torch.save(fn(obj), path)


def _nan_weights(obj: dict) -> dict:
    state = dict(obj["state_dict"])
    first = next(iter(state))
    state[first] = state[first] * float("nan")
    return {**obj, "state_dict": state}


def _shrunk(obj: dict) -> dict:
    state = dict(obj["state_dict"])
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = state[key][:-1]
    return {**obj, "state_dict": state}


case("03f", "pickled object in a checkpoint", Refused("checkpoint_files", "epoch_14.pt", "pickled Python object"))(
    checkpoint_fault(lambda path: _torch_save(path, lambda o: {**o, "config": PickledConfig()})))
case("03f", "truncated checkpoint", Refused("checkpoint_files", "epoch_14.pt", "cannot be read as a torch checkpoint"))(
    checkpoint_fault(truncate))
case("03f", "not a checkpoint", Refused("checkpoint_files", "epoch_14.pt", "cannot be read as a torch checkpoint"))(
    checkpoint_fault(lambda path: path.write_text("epoch 14 went fine")))
case("03f", "a tensor, not a state dict", Refused("checkpoint_files", "epoch_14.pt", "holds no state_dict"))(
    checkpoint_fault(lambda path: _torch_save(path, lambda o: next(iter(o["state_dict"].values())))))
case("03f", "weights of another shape", Refused("checkpoint_files", "epoch_14.pt", "does not fit the model"))(
    checkpoint_fault(lambda path: _torch_save(path, _shrunk)))
case("03f", "NaN weights", Refused("checkpoint_files", "epoch_14.pt", "NaN/inf"))(
    checkpoint_fault(lambda path: _torch_save(path, _nan_weights)))
case("03f", "two files of one epoch", Refused("checkpoint_files", "ckpt", "two files are epoch 14"))(
    checkpoint_fault(lambda path: _torch_save(path, lambda o: {**o, "epoch": 14}), index=2))
case("03f", "one checkpoint file", Refused("checkpoint_files", "epoch_07.pt", "1 checkpoint.*at least 2"))(
    lambda d, p: {"checkpoint_files": str(d / "ckpt" / "epoch_07.pt"), "last_k": 2})
case("03f", "a directory for the files", Refused("checkpoint_files", "ckpt", "is a directory: give a glob"))(
    lambda d, p: {"checkpoint_files": str(d / "ckpt")})
case("03f", "checkpoints without val_loss", DIAGNOSED)(
    lambda d, p: [_torch_save(f, lambda o: {"state_dict": o["state_dict"]}) for f in (d / "ckpt").glob("*.pt")] and {})
case("03f", "validation truncated", Refused("validation", V, "cannot be read as .npz"))(file_fault("validation", truncate))
case("03f", "validation directory", Refused("validation", V, "is a directory"))(file_fault("validation", as_directory))
case("03f", "validation missing", Refused("validation", V, "file not found"))(file_fault("validation", missing))
case("03f", "validation object array", Refused("validation", V, "object array"))(
    edit_npz("validation", lambda a: {**a, "repeat_id": a["repeat_id"].astype(object)}))
case("03f", "validation strings in x", Refused("validation", V, "'x' and 'target' must be numeric"))(
    edit_npz("validation", lambda a: {**a, "x": a["x"].astype(str)}))
case("03f", "validation NaN in x", Refused("validation", V, "'x' has 1 NaN/inf"))(
    edit_npz("validation", lambda a: {**a, "x": np.where(np.arange(a["x"].size).reshape(a["x"].shape) == 0, np.nan,
                                                         a["x"])}))
case("03f", "validation target one-dimensional", Refused("validation", V, "'target' has shape"))(
    edit_npz("validation", lambda a: {**a, "target": a["target"][:, 0]}))
case("03f", "validation x and target of other lengths", Refused("validation", V, "'target' has shape"))(
    edit_npz("validation", lambda a: {**a, "x": a["x"][:-1]}))
case("03f", "validation experiment_x of another width", Refused("validation", V, "'experiment_x' has shape"))(
    edit_npz("validation", lambda a: {**a, "experiment_x": a["experiment_x"][:-1]}))
case("03f", "validation of three samples", Refused("validation", V, "3 validation samples; need at least 8"))(
    edit_npz("validation", lambda a: {k: v[:3] if k in ("x", "target", "repeat_id") else v for k, v in a.items()}))
case("03f", "validation target of other parameters", Refused("checkpoint_files", "epoch_07.pt", "predicts shape"))(
    edit_npz("validation", lambda a: {**a, "target": a["target"][:, :-1], "experiment_target": a["experiment_target"][:-1],
                                      "train_target": a["train_target"][:, :-1]}))

# ---------------------------------------------------------------------------- 04: scores, history, seen_ids, roc_function
S, H, SEEN = "scores.parquet", "history.json", "seen_ids.parquet"
case("04", "truncated scores", Refused("scores", S, "cannot be read as a table"))(file_fault("scores", truncate))
case("04", "scores directory", Refused("scores", S, "is a directory"))(file_fault("scores", as_directory))
case("04", "scores missing", Refused("scores", S, "file not found"))(file_fault("scores", missing))
case("04", "scores csv with a broken header", Refused("scores", "scores.csv", "cannot be read as a table"))(
    lambda d, p: (d / "scores.csv").write_bytes(b'"epoch,label\n\xff') and {"scores": str(d / "scores.csv")})
case("04", "no score or logit column", Refused("scores", S, "needs a 'score' or a 'logit' column"))(
    edit_table("scores", lambda t: t.drop(columns=["score", "logit"])))
case("04", "strings in label", Refused("scores", S, "'label' must be numeric"))(
    edit_table("scores", lambda t: t.assign(label=t["label"].map({0: "neg", 1: "pos"}))))
case("04", "label 2", Refused("scores", S, "'label' must hold only 0 and 1"))(
    edit_table("scores", lambda t: t.assign(label=t["label"] * 2)))
case("04", "fractional epoch", Refused("scores", S, "'epoch' must hold integers"))(
    edit_table("scores", lambda t: t.assign(epoch=t["epoch"] + 0.5)))
case("04", "NaN score", Refused("scores", S, "'score' has 1 NaN/inf"))(
    edit_table("scores", lambda t: t.assign(score=t["score"].where(t.index != 11, np.nan))))
case("04", "inf logit", Refused("scores", S, "'logit' has 1 NaN/inf"))(
    edit_table("scores", lambda t: t.assign(logit=t["logit"].where(t.index != 11, np.inf))))
case("04", "score outside [0, 1]", Refused("scores", S, r"'score' must hold probabilities in \[0, 1\]"))(
    edit_table("scores", lambda t: t.assign(score=t["logit"])))
case("04", "words in score (csv)", Refused("scores", "scores.csv", "'score' must be numeric"))(
    edit_table("scores", lambda t: t.assign(score=t["score"].astype(object).where(t.index != 2, "high")), ".csv"))
case("04", "empty scores", Refused("scores", S, "no rows"))(edit_table("scores", lambda t: t.iloc[:0]))
case("04", "one class", Refused("scores", S, "has no positives"))(edit_table("scores", lambda t: t.assign(label=0)))
case("04", "one row", Refused("scores", S, "has no (positives|negatives)"))(edit_table("scores", lambda t: t.iloc[:1]))
case("04", "pair_id words", Refused("scores", S, "'pair_id' must hold integers"))(
    edit_table("scores", lambda t: t.assign(pair_id="galaxy")))
case("04", "pair_id partly words (csv)", Refused("scores", "scores.csv", "'pair_id' must hold integers"))(
    edit_table("scores", lambda t: t.assign(pair_id=t["pair_id"].astype(object).where(t.index != 4, "g4")), ".csv"))
case("04", "pair_id fractional", Refused("scores", S, "'pair_id' must hold integers"))(
    edit_table("scores", lambda t: t.assign(pair_id=t["pair_id"] + 0.5)))
case("04", "sample_id twice in an epoch", DIAGNOSED)(  # the duplicated_eval_rows finding
    edit_table("scores", lambda t: t.assign(sample_id=t["sample_id"].where(t.index != 1, t["sample_id"][0]))))
case("04", "sample_id twice in an epoch with both labels", Refused("scores", S, "has both labels in epoch"))(
    edit_table("scores", lambda t: t.assign(sample_id=t["sample_id"].where(t.index != 1, t["sample_id"][0]),
                                            label=t["label"].where(t.index != 1, 1 - t["label"][0]))))
case("04", "one epoch", DIAGNOSED)(
    lambda d, p: {**edit_table("scores", lambda t: t[t["epoch"] == t["epoch"].max()])(d, p), "history": "",
                  "seen_ids": ""})
case("04", "one positive, one negative", DIAGNOSED)(
    lambda d, p: {**edit_table("scores", lambda t: t.groupby(["epoch", "label"]).head(1))(d, p), "history": "",
                  "seen_ids": ""})
case("04", "constant scores", DIAGNOSED)(edit_table("scores", lambda t: t.assign(score=np.float32(1.0), logit=9.0)))
case("04", "logits only", DIAGNOSED)(edit_table("scores", lambda t: t.drop(columns="score")))
case("04", "scores only, no pairs, no ids", DIAGNOSED)(
    lambda d, p: {**edit_table("scores", lambda t: t.drop(columns=["logit", "pair_id", "sample_id"]))(d, p),
                  "roc_function": ""})
case("04", "history truncated", Refused("history", H, "not valid JSON"))(file_fault("history", truncate))
case("04", "history directory", Refused("history", H, "TensorBoard event files"))(file_fault("history", as_directory))
case("04", "history missing", Refused("history", H, "file not found"))(file_fault("history", missing))
case("04", "history of numbers", Refused("history", H, "expected a list of per-epoch objects"))(
    write_text("history", "[1, 2, 3]"))
case("04", "history empty", Refused("history", H, "no entries"))(write_text("history", "[]"))
case("04", "history metric above 1", Refused("history", H, r"'tpr@fpr1e-4' must be a rate in \[0, 1\]"))(
    write_text("history", '[{"epoch": 0, "tpr@fpr1e-4": 87.5}]'))
case("04", "history infinite metric", Refused("history", H, "'tpr@fpr1e-4' has infinite values"))(
    write_text("history", '[{"epoch": 0, "tpr@fpr1e-4": Infinity}]'))
case("04", "history metric as words", Refused("history", H, "'tpr@fpr1e-4' must be numeric"))(
    write_text("history", '[{"epoch": 0, "tpr@fpr1e-4": "high"}, {"epoch": 1, "tpr@fpr1e-4": 0.5}]'))
case("04", "history epoch as words", Refused("history", H, "'epoch'"))(
    write_text("history", '[{"epoch": "first", "val_loss": 0.1}, {"epoch": 1, "val_loss": 0.1}]'))
case("04", "history keras lists of other lengths", Refused("history", H, "different lengths"))(
    write_text("history", '{"loss": [1, 2], "val_loss": [1]}'))
case("04", "history trainer_state epoch a word", Refused("history", H, "'epoch'"))(
    write_text("history", '{"log_history": [{"epoch": "one", "loss": 0.5}]}'))
case("04", "history trainer_state loss a word", Refused("history", H, "'loss'"))(
    write_text("history", '{"log_history": [{"epoch": 1.0, "loss": "low"}]}'))
case("04", "history csv truncated", DIAGNOSED)(
    lambda d, p: {"history": str(truncate(save_table(pd.DataFrame(json.loads(Path(p["history"]).read_text())["history"]),
                                                     d / "metrics.csv")))})


def tfevents(fault: Callable[[Path], Path] | None = None):
    """The sample history as a TensorBoard event file (as a Lightning or Keras run leaves it), then ``fault``."""
    def make(d: Path, p: dict) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(d / "tb")) as w:
            for row in json.loads(Path(p["history"]).read_text())["history"]:
                for k, v in row.items():
                    if k != "epoch":
                        w.add_scalar(f"val/{k}" if "@" in k else k, v, row["epoch"])
        path = next((d / "tb").glob("events.out.tfevents*")).rename(d / "tb" / "events.out.tfevents.run")
        if fault is not None:
            fault(path)
        return {"history": str(path)}
    return make


case("04", "history tfevents cut short (a live run)", DIAGNOSED)(tfevents(truncate))
case("04", "history tfevents garbage", Refused("history", "events.out.tfevents.run", "no TensorBoard scalars"))(
    tfevents(lambda f: f.write_bytes(b"\x00garbage" * 50) and f))
case("04", "history of other epochs", DIAGNOSED)(
    write_text("history", '[{"epoch": 100, "tpr@fpr1e-4": 0.5}, {"epoch": 101, "tpr@fpr1e-4": 0.4}]'))
case("04", "history without metrics", DIAGNOSED)(write_text("history", '[{"epoch": 0, "val_loss": 0.1}]'))
case("04", "seen_ids truncated", Refused("seen_ids", SEEN, "cannot be read as a table"))(file_fault("seen_ids", truncate))
case("04", "seen_ids directory", Refused("seen_ids", SEEN, "is a directory"))(file_fault("seen_ids", as_directory))
case("04", "seen_ids missing", Refused("seen_ids", SEEN, "file not found"))(file_fault("seen_ids", missing))
case("04", "seen_ids negative worker", Refused("seen_ids", SEEN, "'worker' must be >= 0"))(
    edit_table("seen_ids", lambda t: t.assign(worker=t["worker"] - 1)))
case("04", "seen_ids negative rank", Refused("seen_ids", SEEN, "'rank' must be >= 0"))(
    edit_table("seen_ids", lambda t: t.assign(rank=-t["rank"] - 1)))
case("04", "seen_ids words in epoch", Refused("seen_ids", SEEN, "'epoch' must be numeric"))(
    edit_table("seen_ids", lambda t: t.assign(epoch="e" + t["epoch"].astype(str))))
case("04", "seen_ids missing sample_id", Refused("seen_ids", SEEN, "'sample_id' has 1 missing"))(
    edit_table("seen_ids", lambda t: t.assign(sample_id=t["sample_id"].astype(float).where(t.index != 0, np.nan))))
case("04", "seen_ids empty", Refused("seen_ids", SEEN, "no rows"))(edit_table("seen_ids", lambda t: t.iloc[:0]))
case("04", "seen_ids one row", DIAGNOSED)(edit_table("seen_ids", lambda t: t.iloc[:1]))
case("04", "seen_ids of other epochs", DIAGNOSED)(edit_table("seen_ids", lambda t: t.assign(epoch=t["epoch"] + 100)))
case("04", "seen_ids without rank and worker", DIAGNOSED)(
    edit_table("seen_ids", lambda t: t.drop(columns=["rank", "worker"])))


def roc_source(code: str):
    def make(d: Path, p: dict) -> dict:
        (d / "myroc.py").write_text(code)
        return {"roc_function": f"{d / 'myroc.py'}:roc"}
    return make


case("04", "roc_function raises", DIAGNOSED)(roc_source("def roc(s, y):\n    raise RuntimeError('boom')\n"))
case("04", "roc_function returns garbage", DIAGNOSED)(roc_source("def roc(s, y):\n    return 'fpr', None\n"))
case("04", "roc_function returns NaN", Diagnosed(nan_ok=("roc_implementation_mismatch",)))(
    roc_source("import numpy as np\ndef roc(s, y):\n    return np.full(3, np.nan), np.full(3, np.nan), np.zeros(3)\n"))
case("04", "roc_function file a syntax error", Refused("roc_function", None, "cannot import"))(
    roc_source("def roc(s, y:\n"))

# ---------------------------------------------------------------------------- 05: samples, declared_copies, group_metrics
SA, DC, GM = "samples.parquet", "declared_copies.json", "group_metrics.csv"
case("05", "truncated samples", Refused("samples", SA, "cannot be read as a table"))(file_fault("samples", truncate))
case("05", "samples directory", Refused("samples", SA, "is a directory"))(file_fault("samples", as_directory))
case("05", "samples missing", Refused("samples", SA, "file not found"))(file_fault("samples", missing))
case("05", "empty samples", Refused("samples", SA, "no rows"))(edit_table("samples", lambda t: t.iloc[:0]))
case("05", "one row", Refused("samples", SA, "no rows with split == 'val'"))(edit_table("samples", lambda t: t.iloc[:1]))
case("05", "unknown split", Refused("samples", SA, "'split' has value 'holdout'"))(
    edit_table("samples", lambda t: t.assign(split=t["split"].replace("test", "holdout").where(t.index != 0, "holdout"))))
case("05", "no validation rows", Refused("samples", SA, "no rows with split == 'val'"))(
    edit_table("samples", lambda t: t[t["split"] != "val"]))
case("05", "missing split", Refused("samples", SA, "'split' has 1 missing"))(
    edit_table("samples", lambda t: t.assign(split=t["split"].where(t.index != 0, None))))
case("05", "strings in a named feature", Refused("samples", SA, "'p03' must be numeric"))(
    lambda d, p: {**edit_table("samples", lambda t: t.assign(p03=t["p03"].astype(str)))(d, p),
                  "feature_columns": ["p01", "p03"]})
case("05", "no numeric feature", Refused("samples", SA, "no numeric feature columns"))(
    edit_table("samples", lambda t: t[[c for c in t.columns if not c.startswith("p") and c not in "nkm"]]))
case("05", "NaN feature", Refused("samples", SA, "'p05' has 1 NaN/inf"))(
    edit_table("samples", lambda t: t.assign(p05=t["p05"].where(t.index != 9, np.nan))))
case("05", "inf feature", Refused("samples", SA, "'p05' has 1 NaN/inf"))(
    edit_table("samples", lambda t: t.assign(p05=t["p05"].where(t.index != 9, np.inf))))
case("05", "NaN target", Refused("samples", SA, "'target' has 1 NaN/inf"))(
    edit_table("samples", lambda t: t.assign(target=t["target"].where(t.index != 9, np.nan))))
case("05", "strings in target", Refused("samples", SA, "'target' must be numeric"))(
    edit_table("samples", lambda t: t.assign(target=t["target"].astype(str))))
case("05", "is_augmented 2", Refused("samples", SA, "'is_augmented' must hold only 0 and 1"))(
    edit_table("samples", lambda t: t.assign(is_augmented=t["is_augmented"] * 2)))
case("05", "missing parent_id", Refused("samples", SA, "'parent_id' has 1 missing"))(
    edit_table("samples", lambda t: t.assign(parent_id=t["parent_id"].astype(float).where(t.index != 0, np.nan))))
case("05", "group in two tiers", Refused("samples", SA, "more than one tier"))(
    edit_table("samples", lambda t: t.assign(tier=t["tier"].where(t.index != 0, "extreme"))))
case("05", "reserved feature", Refused("samples", SA, "reserved column"))(lambda d, p: {"feature_columns": ["split"]})
case("05", "unknown feature", Refused("samples", SA, "feature column 'q9' not found"))(
    lambda d, p: {"feature_columns": ["q9"]})
case("05", "constant target", DIAGNOSED)(edit_table("samples", lambda t: t.assign(target=np.float32(0.5))))
case("05", "a constant feature", DIAGNOSED)(edit_table("samples", lambda t: t.assign(p00=np.float32(0.0))))
case("05", "every feature constant", DIAGNOSED)(
    edit_table("samples", lambda t: t.assign(**{c: np.float32(1.0) for c in t.columns if c[0] in "pnkm" and c != "parent_id"})))
case("05", "one group", DIAGNOSED)(
    lambda d, p: {**edit_table("samples", lambda t: t.assign(group="k=4,m=2", tier="easy"))(d, p),
                  "declared_copies": "", "group_metrics": ""})
case("05", "one train row, one val row", DIAGNOSED)(
    lambda d, p: {**edit_table("samples", lambda t: t[t["is_augmented"] == 0].groupby("split").head(1))(d, p),
                  "declared_copies": "", "group_metrics": ""})
case("05", "every feature constant, no parent_id", DIAGNOSED)(
    edit_table("samples", lambda t: t.drop(columns=["parent_id", "is_augmented"]).assign(
        **{c: np.float32(1.0) for c in t.columns if c[0] in "pnkm" and c != "parent_id"})))
case("05", "one parent for every row", DIAGNOSED)(edit_table("samples", lambda t: t.assign(parent_id=7)))
case("05", "every row its own parent", DIAGNOSED)(
    edit_table("samples", lambda t: t.assign(parent_id=np.arange(len(t))).drop(columns="is_augmented")))
case("05", "features only", DIAGNOSED)(
    lambda d, p: {**edit_table("samples", lambda t: t[["split", "p00", "p01"]])(d, p), "declared_copies": "",
                  "group_metrics": ""})
case("05", "declared truncated", Refused("declared_copies", DC, "not valid JSON"))(file_fault("declared_copies", truncate))
case("05", "declared directory", Refused("declared_copies", DC, "is a directory"))(
    file_fault("declared_copies", as_directory))
case("05", "declared missing", Refused("declared_copies", DC, "file not found"))(file_fault("declared_copies", missing))
case("05", "declared a list", Refused("declared_copies", DC, "expected a JSON object"))(
    write_text("declared_copies", "[1, 2]"))
case("05", "declared negative copies", Refused("declared_copies", DC, "must be a number >= 0"))(
    write_text("declared_copies", '{"k=4,m=2": -1}'))
case("05", "declared copies a word", Refused("declared_copies", DC, "must be a number >= 0"))(
    write_text("declared_copies", '{"k=4,m=2": "two"}'))
case("05", "declared copies NaN", Refused("declared_copies", DC, "must be a number >= 0"))(
    write_text("declared_copies", '{"k=4,m=2": NaN}'))
case("05", "declared unknown group", Refused("declared_copies", DC, "group 'k=9,m=9' is not in the samples"))(
    write_text("declared_copies", '{"k=9,m=9": 1}'))
case("05", "declared empty", DIAGNOSED)(write_text("declared_copies", "{}"))
case("05", "group_metrics truncated", Refused("group_metrics", GM, "."))(file_fault("group_metrics", truncate))
case("05", "group_metrics directory", Refused("group_metrics", GM, "is a directory"))(
    file_fault("group_metrics", as_directory))
case("05", "group_metrics missing", Refused("group_metrics", GM, "file not found"))(
    file_fault("group_metrics", missing))
case("05", "group_metrics words in value", Refused("group_metrics", GM, "'value' must be numeric"))(
    edit_table("group_metrics", lambda t: t.assign(value=t["value"].astype(object).where(t.index != 0, "low"))))
case("05", "group_metrics NaN value", Refused("group_metrics", GM, "'value' has 1 NaN/inf"))(
    edit_table("group_metrics", lambda t: t.assign(value=t["value"].where(t.index != 0, np.nan))))
case("05", "group_metrics empty", Refused("group_metrics", GM, "no rows"))(edit_table("group_metrics", lambda t: t.iloc[:0]))
case("05", "group_metrics negative loss", Refused("group_metrics", GM, "'value' must be >= 0"))(
    edit_table("group_metrics", lambda t: t.assign(value=t["value"] - 1)))
case("05", "group_metrics without baseline", Refused("group_metrics", GM, "no rows with run == 'baseline'"))(
    edit_table("group_metrics", lambda t: t[t["run"] != "baseline"]))
case("05", "group_metrics a third run", Refused("group_metrics", GM, "exactly one run besides the baseline"))(
    edit_table("group_metrics", lambda t: pd.concat([t, t.assign(run="third")])))
case("05", "group_metrics a group twice", Refused("group_metrics", GM, "appears twice"))(
    edit_table("group_metrics", lambda t: pd.concat([t, t.iloc[:1]])))
case("05", "group_metrics unknown group", Refused("group_metrics", GM, "is not in the samples' 'group' column"))(
    edit_table("group_metrics", lambda t: t.assign(group=t["group"].where(t.index != 0, "k=9,m=9"))))
case("05", "group_metrics of some groups", DIAGNOSED)(
    edit_table("group_metrics", lambda t: t[t["group"].isin(sorted(t["group"].unique())[:3])]))
case("05", "group_metrics one group", DIAGNOSED)(
    edit_table("group_metrics", lambda t: t[t["group"] == t["group"].iloc[0]]))
case("05", "group_metrics zero baseline", DIAGNOSED)(
    edit_table("group_metrics", lambda t: t.assign(value=t["value"].where(t["run"] != "baseline", 0.0))))
case("05", "group_metrics perfect everywhere", DIAGNOSED)(edit_table("group_metrics", lambda t: t.assign(value=0.0)))


@pytest.mark.parametrize("c", CASES, ids=[f"{c.notebook}-{c.name}" for c in CASES])
def test_malformed_input(c: Case, tmp_path):
    params = BASES[c.notebook](tmp_path)
    UNPICKLED.clear()
    params.update(c.make(tmp_path, params) or {})
    _stale_summary(Path(params["output_dir"]))
    pipeline = PIPELINES[c.notebook[:2]]
    with deadline(CASE_SECONDS), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warning is no failure; a traceback or a NaN claim is
        if isinstance(c.expect, Refused):
            with pytest.raises(InputError) as e:
                pipeline(params)
            check_refusal(e.value, c.expect)
        else:
            summary, found = pipeline(params)
            check_diagnosis(summary, found, c.expect)
    assert not UNPICKLED, "a checkpoint's pickled object was executed"
    written = Path(params["output_dir"]) / "summary.json"
    if isinstance(c.expect, Refused):
        assert not written.exists(), "a refused run left a summary.json"
    else:
        assert json.loads(written.read_text())["notebook"].startswith(c.notebook[:2]), "the stale summary.json is left"


def test_every_fault_class_is_covered_for_every_notebook():
    names = {nb: " | ".join(c.name for c in CASES if c.notebook.startswith(nb)) for nb in PIPELINES}
    for nb, text in names.items():
        for fault in ("truncated", "directory", "missing", "NaN|inf", "one row|one checkpoint|two rows",
                      "strings|words", "constant", "one class|one group|one epoch|one unit|one session|one checkpoint"):
            assert re.search(fault, text), f"{nb} has no {fault!r} case"


# ============================================================================ the output directory
def test_start_output_removes_an_earlier_summary_and_refuses_a_file(tmp_path):
    out = tmp_path / "out"
    _stale_summary(out)
    assert start_output("01_r2_gap", str(out)) == out and not (out / "summary.json").exists()
    assert start_output("01_r2_gap", str(tmp_path / "new" / "dir")).is_dir()
    (tmp_path / "report.txt").write_text("not a directory")
    with pytest.raises(InputError) as e:
        start_output("01_r2_gap", str(tmp_path / "report.txt"))
    check_refusal(e.value, Refused("output_dir", "report.txt", "is a file, expected a directory"))
    with pytest.raises(InputError, match="output_dir: expected a directory path"):
        start_output("01_r2_gap", 3)


# ============================================================================ papermill
# A misspelt parameter that papermill injected is refused by the notebook itself: load_inputs reads the
# kernel's input history (params.check_injected). Under a stand-in IPython shell, every notebook's face
# refuses it in one line before reading a file; test_params executes one notebook to show it in a real
# kernel, and each notebook's own tests execute one refusal by papermill (tests/notebook_checks.py).
INJECTED = [  # (notebook, the misspelt name, what the one line says)
    ("01", "predictionz", ["predictionz: is not a parameter", "did you mean 'predictions'"]),
    ("02", "embedings", ["embedings: is not a parameter", "did you mean 'embeddings'"]),
    ("03", "last_kk", ["last_kk: is not a parameter", "did you mean 'last_k'"]),
    ("04", "fpr_target", ["fpr_target: is not a parameter", "did you mean 'fpr_targets'"]),
    ("05", "baseline", ["baseline: is not a parameter", "did you mean 'baseline_run'"]),
]


class _Shell:
    def __init__(self, source: str):
        self.user_ns = {"In": ["import sys", source]}


@pytest.mark.parametrize("key, name, expected", INJECTED, ids=[k for k, _, _ in INJECTED])
def test_an_injected_unknown_parameter_is_refused_by_every_notebook(key, name, expected, tmp_path, monkeypatch):
    import IPython

    params = BASES[key](tmp_path)
    monkeypatch.setattr(IPython, "get_ipython", lambda: _Shell(f"# Parameters\n{name} = 'x'\n"))
    _stale_summary(Path(params["output_dir"]))
    with pytest.raises(InputError) as e:
        PIPELINES[key](params)
    line = str(e.value)
    assert "\n" not in line and all(part in line for part in expected), line
    assert not (Path(params["output_dir"]) / "summary.json").exists()


@pytest.mark.notebook
@pytest.mark.parametrize("name, key, case_name", [
    ("02_encoder_variance", "02", "two rows, two puzzles"),  # every cell of the diagnosis on two rows
    ("04_roc_collapse", "04", "roc_function raises"),  # the user's ROC function fails in a later cell too
])
def test_papermill_completes_on_degenerate_but_valid_data(name, key, case_name, tmp_path, warm_kernel):
    """Every cell of the notebook, executed by papermill (in the worker's warm kernel), completes."""
    from helpers.runner.execute import execute

    c = next(c for c in CASES if c.notebook == key and c.name == case_name)
    d = tmp_path / "run"
    d.mkdir()
    params = BASES[key](d)
    params.update(c.make(d, params) or {})
    if key == "02":  # the minimal call: the embeddings only, the sample's comparison encoders not used (the
        # demos are off: 02's lab and exercises run on simulated encoders and never read the user's run)
        params = {"embeddings": params["embeddings"], "run_demos": False}
    out = tmp_path / "out"
    _stale_summary(out)
    summary = execute(name, params, out, cwd=d, cell_timeout=120, kernel_manager=warm_kernel)
    assert summary["notebook"] == name and summary["findings"] and not summary["sample_run"]
    assert list(summary["dropped"]) == (["compare"] if key == "02" else [])


# ============================================================================ never unpickle
NUMPY_LOADS = {"np.load", "numpy.load", "np.lib.npyio.load"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "pd.read_pickle", "pandas.read_pickle",
              "joblib.load", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _keyword_is(node: ast.Call, key: str, value: bool) -> bool:
    return any(k.arg == key and isinstance(k.value, ast.Constant) and k.value.value is value for k in node.keywords)


def unsafe_loads(source: str | ast.AST, where: str = "<source>") -> list[str]:
    """Loader calls in ``source`` (text, or its parsed tree) that could unpickle: np.load without
    allow_pickle=False, torch.load without weights_only=True, any pickle-based reader."""
    bad = []
    for node in ast.walk(ast.parse(source) if isinstance(source, str) else source):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in NUMPY_LOADS and not _keyword_is(node, "allow_pickle", False):
            bad.append(f"{where}:{node.lineno}: {name} without allow_pickle=False")
        elif name in TORCH_LOADS and not _keyword_is(node, "weights_only", True):
            bad.append(f"{where}:{node.lineno}: {name} without weights_only=True")
        elif name in UNPICKLERS:
            bad.append(f"{where}:{node.lineno}: {name}")
    return bad


def test_the_unpickling_scan_sees_through_comments_and_strings():
    assert unsafe_loads("np.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)") == [
        "<source>:1: np.load without allow_pickle=False", "<source>:2: torch.load without weights_only=True",
        "<source>:3: pickle.loads"]
    assert unsafe_loads("# np.load(p)\ns = 'torch.load(p)'\nnp.load(p, allow_pickle=False)\n"
                        "torch.load(p, map_location='cpu', weights_only=True)") == []


def test_loading_never_unpickles():
    trees = {path: ast.parse(path.read_text()) for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    calls = {_dotted(n.func) for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert calls & NUMPY_LOADS and calls & TORCH_LOADS, "the scan found no loader call at all"
    bad = [line for path, tree in trees.items() for line in unsafe_loads(tree, str(path.relative_to(PACKAGE_DIR)))]
    assert not bad, "\n".join(bad)
