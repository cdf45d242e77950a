"""Parameters as papermill passes them: lists as text, and names the notebook does not declare."""

import pytest

from helpers.io import InputError
from helpers.params import check_injected, check_types, parse_list
from helpers.runner.execute import NotebookFailed, execute


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


@pytest.mark.notebook
def test_misspelt_parameter_is_refused_by_the_notebook_itself(tmp_path, elsewhere):
    """Plain papermill: the injected cell reaches the kernel, and the validation cell refuses the name."""
    with pytest.raises(NotebookFailed) as e:
        execute("02_encoder_variance", {"embeddingz": "mine.npz", "run_demos": False}, tmp_path / "o", cwd=elsewhere)
    assert e.value.line.startswith("InputError: embeddingz: is not a parameter of this notebook (did you mean 'embeddings'?)")
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.notebook
def test_list_parameter_given_as_text(tmp_path, elsewhere):
    summary = execute("02_encoder_variance", {"compare": "[]", "run_demos": False}, tmp_path / "o", cwd=elsewhere)
    assert summary["parameters"]["compare"] == []


def test_check_not_mixed(elsewhere):
    from helpers.params import check_not_mixed

    (elsewhere / "mine.parquet").write_bytes(b"x")
    sample = {"predictions": "data_samples/01_r2_gap/predictions.parquet", "reported": "data_samples/01_r2_gap/reported.json"}
    check_not_mixed(sample, ["predictions", "reported"])  # all sample: fine
    check_not_mixed({**sample, "predictions": "mine.parquet", "reported": ""}, ["predictions", "reported"])  # all yours
    check_not_mixed({**sample, "predictions": "mine.parquet"}, ["predictions"])  # 'reported' not read
    with pytest.raises(InputError) as e:
        check_not_mixed({**sample, "predictions": "mine.parquet"}, ["predictions", "reported"])
    assert str(e.value).startswith("reported: still points at the bundled sample run (data_samples/01_r2_gap/reported.json)"
                                   " while predictions is your file")
    with pytest.raises(InputError, match="^compare: still points"):
        check_not_mixed({"embeddings": "mine.parquet", "compare": ["data_samples/02_encoder_variance/deterministic.npz"]},
                        ["embeddings", "compare"])
