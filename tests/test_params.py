"""Parameters as papermill passes them: lists as text, and names the notebook does not declare."""

import pytest

from helpers.io import InputError
from helpers.params import check_injected, check_types, parse_list
from helpers.paths import DATA_SAMPLES


@pytest.mark.parametrize("text, expected", [
    ("[1e-4, 1e-3]", [1e-4, 1e-3]),  # YAML 1.1 would read 1e-4 as a string
    ("[0.5, 0.85]", [0.5, 0.85]),
    ("[]", []),
    ("", []),
    ('["a.npz", "b.npz"]', ["a.npz", "b.npz"]),
    ("[runs/a.npz, runs/b.npz]", ["runs/a.npz", "runs/b.npz"]),
    ("[x1, x2]", ["x1", "x2"]),
])
def test_parse_list(text, expected):
    assert parse_list("p", text) == expected


@pytest.mark.parametrize("text, problem", [
    ("1e-4", "expected a list like [1e-4, 1e-3], got '1e-4'"),
    ("[1e-4", "could not parse '[1e-4'"),
    ("{a: 1}", "expected a list"),
])
def test_parse_list_refuses(text, problem):
    with pytest.raises(InputError, match="^fpr_targets: ") as e:
        parse_list("fpr_targets", text)
    assert problem in str(e.value)


def test_check_types_takes_list_text():
    assert check_types({"compare": "[]", "seed": 0}, {"compare": list, "seed": int}) == {"compare": [], "seed": 0}
    with pytest.raises(InputError, match="compare: expected a list"):
        check_types({"compare": "x.npz"}, {"compare": list})


class FakeShell:
    def __init__(self, history):
        self.user_ns = {"In": history}


@pytest.mark.parametrize("history, error", [
    (["import x", "# Parameters\npredictionz = 'my.parquet'\nseed = 1\n"], "predictionz: is not a parameter of 01 (did you mean 'predictions'?)"),
    (["# Parameters\nseed = 1\n"], None),
    (["x = 1"], None),  # nothing injected: JupyterLab
    (["# Parameters\nfoo = 1\n", "# Parameters\nseed = 2\n"], None),  # the latest injection counts
    (["# Parameters\nzzz = 1\n"], "zzz: is not a parameter of 01; its parameters are: predictions, seed"),
])
def test_check_injected(monkeypatch, history, error):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeShell(history))
    if error is None:
        check_injected(["predictions", "seed"], "01")
    else:
        with pytest.raises(InputError) as e:
            check_injected(["predictions", "seed"], "01")
        assert str(e.value).startswith(error)


def test_list_parameter_given_as_text(tmp_path):
    """papermill's -p passes a list as its text; the face takes it (the notebooks' new-run tests pass
    lists as text through papermill too: 04's fpr_targets, 05's feature_columns)."""
    from face import pipeline

    from helpers.encoder_variance import diagnosis as dx

    r = pipeline(dx, compare="[]", output_dir=str(tmp_path / "o"))
    assert r.params["compare"] == [] and r.summary.to_dict()["parameters"]["compare"] == []


def test_the_sample_companions_are_dropped_and_a_required_sample_file_refused(elsewhere):
    """One rule in every notebook: with the main input yours, an optional input still at the sample's
    default is not used (set empty, and said how to give yours); a required one is refused."""
    import math

    from helpers.params import drop_sample_companions, notebook_defaults

    (elsewhere / "mine.parquet").write_bytes(b"x")
    d01 = notebook_defaults("01_r2_gap")
    sample = dict(d01)
    assert drop_sample_companions(sample, "01_r2_gap", ["predictions"], ["reported"]) == {}  # the sample run
    assert sample == d01
    mine = {**d01, "predictions": "mine.parquet"}
    dropped = drop_sample_companions(mine, "01_r2_gap", ["predictions"], ["reported"])
    assert list(dropped) == ["reported"] and "-p reported" in dropped["reported"] and mine["reported"] == ""
    given = {**d01, "predictions": "mine.parquet", "reported": "mine.parquet"}  # the user's companion stays
    assert drop_sample_companions(given, "01_r2_gap", ["predictions"], ["reported"]) == {}
    assert given["reported"] == "mine.parquet"
    # a list companion, a numeric one, and the sample's file named by its absolute path
    d05 = notebook_defaults("05_augmentation_leakage")
    p05 = {**d05, "samples": "mine.parquet",
           "group_metrics": str(DATA_SAMPLES / "05_augmentation_leakage" / "group_metrics.csv"), "val_loss": 0.5}
    dropped = drop_sample_companions(p05, "05_augmentation_leakage", ["samples"],
                                     ["declared_copies", "group_metrics", "train_loss", "val_loss"])
    assert set(dropped) == {"declared_copies", "group_metrics", "train_loss"}
    assert p05["group_metrics"] == "" and math.isnan(p05["train_loss"]) and p05["val_loss"] == 0.5
    p02 = {**notebook_defaults("02_encoder_variance"), "embeddings": "mine.parquet"}
    assert list(drop_sample_companions(p02, "02_encoder_variance", ["embeddings"], ["compare"])) == ["compare"]
    assert p02["compare"] == []
    # two required inputs: the user's and the sample's is a chimera, refused in one line
    p03 = {**notebook_defaults("03_checkpoint_divergence"), "checkpoint_files": "mine.parquet",
           "validation": "data_samples/03_checkpoint_divergence/validation.npz"}
    with pytest.raises(InputError, match="^validation: still points at the bundled sample run while "
                                         "checkpoint_files is yours"):
        drop_sample_companions(p03, "03_checkpoint_divergence", ["checkpoint_files", "validation"], ["forward_model"])




LOOPS = """
def loop(*args):
    while True:
        try:
            sum(range(1000))
        except Exception:  # the user's own handler cannot swallow the limit
            return "swallowed"


def fine(x):
    return x + 1
"""


def test_a_user_callable_past_its_time_limit_ends_in_one_line(tmp_path):
    import signal
    import time

    from helpers.params import CallableTimeout, load_callable

    (tmp_path / "user.py").write_text(LOOPS)
    fn = load_callable("roc_function", f"{tmp_path / 'user.py'}:loop", timeout=0.2)
    assert load_callable("roc_function", f"{tmp_path / 'user.py'}:fine", timeout=0.2)(1) == 2
    t0 = time.monotonic()
    with pytest.raises(CallableTimeout) as e:
        fn([0.1], [1])
    assert time.monotonic() - t0 < 3
    assert not isinstance(e.value, Exception)  # no `except Exception` anywhere swallows it
    assert e.value._render_traceback_() == [f"InputError: {e.value}"] and "\n" not in str(e.value)
    assert str(e.value).startswith("roc_function: did not return within 0.2 s (callable_timeout)")
    # an enclosing timer (a test's deadline) is re-armed with what it had left
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        with pytest.raises(CallableTimeout):
            fn()
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_a_user_callable_is_imported_without_writing_beside_its_file(tmp_path, monkeypatch):
    """The file is the user's: importing it leaves no __pycache__ in its folder, even where Python writes
    bytecode (the default), and the interpreter's own setting is restored."""
    import sys

    from helpers.params import load_callable

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    (tmp_path / "user.py").write_text(LOOPS)
    assert load_callable("roc_function", f"{tmp_path / 'user.py'}:fine")(1) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.py"]
    assert sys.dont_write_bytecode is False
