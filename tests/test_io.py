import re

import numpy as np
import pandas as pd
import pytest

from helpers.io import InputError, check_shape, load_arrays, load_json, load_table, resolve_path
from helpers.params import check_range, check_types, load_callable

SCHEMA = {"y_true": "float", "y_pred": "float"}


def one_line(exc: InputError) -> str:
    text = exc._render_traceback_()
    assert len(text) == 1 and "\n" not in text[0]
    return text[0]


def test_error_is_one_line_naming_parameter_file_problem(tmp_path):
    with pytest.raises(InputError) as e:
        load_table("predictions", tmp_path / "nope.parquet", SCHEMA)
    line = one_line(e.value)
    assert line.startswith("InputError: predictions: ") and "nope.parquet" in line and "file not found" in line


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_load_table_roundtrip_and_extra_columns_kept(tmp_path, suffix):
    df = pd.DataFrame({"y_true": [1.0, 2.0], "y_pred": [1, 2], "other": ["a", "b"]})
    path = tmp_path / f"t{suffix}"
    df.to_parquet(path) if suffix == ".parquet" else df.to_csv(path, index=False)
    got = load_table("p", path, SCHEMA)
    assert got["y_pred"].dtype == float and list(got["other"]) == ["a", "b"]


@pytest.mark.parametrize("frame, problem", [
    (pd.DataFrame({"y_true": [1.0]}), "missing required column 'y_pred'"),
    (pd.DataFrame({"y_true": [1.0, np.nan], "y_pred": [1.0, 2.0]}), "column 'y_true' has 1 NaN/inf values (first at row 1)"),
    (pd.DataFrame({"y_true": [1.0, np.inf], "y_pred": [1.0, 2.0]}), "NaN/inf"),
    (pd.DataFrame({"y_true": ["a", "b"], "y_pred": [1.0, 2.0]}), "column 'y_true' must be numeric"),
    (pd.DataFrame({"y_true": pd.Series([], dtype=float), "y_pred": pd.Series([], dtype=float)}), "table has no rows"),
])
def test_load_table_rejects(tmp_path, frame, problem):
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    with pytest.raises(InputError) as e:
        load_table("predictions", path, SCHEMA)
    assert problem in str(e.value) and str(path) in str(e.value)


def test_kinds_int_binary_key(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"y_true": [1.0, 2], "y_pred": [1.0, 2], "rank": [0.5, 1], "label": [0, 2]}).to_parquet(path)
    with pytest.raises(InputError, match="'rank' must hold integers"):
        load_table("p", path, SCHEMA, {"rank": "int"})
    with pytest.raises(InputError, match="only 0 and 1"):
        load_table("p", path, SCHEMA, {"label": "binary"})
    pd.DataFrame({"y_true": [1.0], "y_pred": [1.0], "session": [None]}).to_parquet(path)
    with pytest.raises(InputError, match="'session' has 1 missing"):
        load_table("p", path, SCHEMA, {"session": "key"})


@pytest.mark.parametrize("column, kind, dtype, problem", [
    (pd.Series([0.5, 2.0], dtype=np.float32), "real", np.float32, None),  # kept: no float64 copy
    (pd.Series([0.5, 2.0], dtype=np.float32), "float", np.float64, None),
    (pd.Series([1, 2], dtype=np.int32), "count", np.int64, None),
    (pd.Series([-1, 2], dtype=np.int16), "count", None, "must be >= 0, found -1"),
    (pd.Series([True, False]), "binary", np.int64, None),
    (pd.Series([1, 2], dtype="Int64"), "int", np.int64, None),  # nullable, no missing value
    (pd.Series([1, None], dtype="Int64"), "int", None, "1 NaN/inf values (first at row 1)"),
    (pd.Series([0.0, np.nan], dtype=np.float32), "real", None, "1 NaN/inf values (first at row 1)"),
    (pd.Series([0, 1, 3], dtype=np.uint8), "binary", None, "only 0 and 1"),
    (pd.Series([1.0, 2.5]), "count", None, "must hold integers"),
])
def test_column_kinds_on_every_dtype(column, kind, dtype, problem):
    from pathlib import Path

    from helpers.io import check_column

    if problem is None:
        got = check_column("p", Path("t.parquet"), column, "c", kind)
        assert got.dtype == dtype and np.array_equal(got.to_numpy(), column.to_numpy(dtype=float))
    else:
        with pytest.raises(InputError, match=re.escape(problem)):
            check_column("p", Path("t.parquet"), column, "c", kind)


def test_unreadable_and_wrong_suffix(tmp_path):
    bad = tmp_path / "t.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputError, match="cannot be read as a table"):
        load_table("p", bad, SCHEMA)
    txt = tmp_path / "t.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match="unsupported file type '.txt'"):
        load_table("p", txt, SCHEMA)
    with pytest.raises(InputError, match="is a directory"):
        load_table("p", tmp_path, SCHEMA)
    with pytest.raises(InputError, match="expected a file path"):
        resolve_path("p", "")


def test_relative_paths_fall_back_to_repo_root(elsewhere):
    path = resolve_path("predictions", "data_samples/01_r2_gap/predictions.parquet")
    assert path.is_file() and elsewhere not in path.parents


def test_load_arrays_and_shapes(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, z=np.ones((3, 2)), group=np.array(["a", "b", "c"]), bad=np.array([np.nan]))
    arrays = load_arrays("embeddings", path, ["z", "group"])
    assert set(arrays) == {"z", "group"}
    with pytest.raises(InputError, match="missing required array 'w'"):
        load_arrays("embeddings", path, ["w"])
    with pytest.raises(InputError, match="array 'bad' has 1 NaN/inf"):
        load_arrays("embeddings", path, ["z"], optional=["bad"])
    with pytest.raises(InputError, match=r"shape \(3, 2\), expected \(\*, 4\)"):
        check_shape("embeddings", path, "z", arrays["z"], (None, 4))


def test_load_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"r2": 0.4790}')
    assert load_json("reported", path, parse_float=str) == {"r2": "0.4790"}
    path.write_text("{oops")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_json("reported", path)


def test_check_types_and_ranges():
    assert check_types({"a": 1}, {"a": float}) == {"a": 1.0}
    with pytest.raises(InputError, match="seed: expected an integer, got True"):
        check_types({"seed": True}, {"seed": int})
    with pytest.raises(InputError, match="tolerance: expected a number, got 'abc' \\(str\\)"):
        check_types({"tolerance": "abc"}, {"tolerance": float})
    with pytest.raises(InputError, match="missing"):
        check_types({}, {"x": str})
    with pytest.raises(InputError, match=r"must be in \[0, 1\], got 2"):
        check_range("q", 2, 0, 1)
    with pytest.raises(InputError, match="NaN"):
        check_range("q", float("nan"), 0, 1)


def test_load_callable(tmp_path):
    assert load_callable("f", "numpy:mean") is np.mean
    mod = tmp_path / "mine.py"
    mod.write_text("def roc(s, y):\n    return 42\n")
    assert load_callable("roc_function", f"{mod}:roc")(None, None) == 42
    with pytest.raises(InputError, match="roc_function: .*has no callable named 'nope'"):
        load_callable("roc_function", f"{mod}:nope")
    with pytest.raises(InputError, match="cannot import 'no_such_module_xyz'"):
        load_callable("f", "no_such_module_xyz:f")
    with pytest.raises(InputError, match="expected 'module:function'"):
        load_callable("f", "numpy")


def test_checked_float32_columns_stay_one_block(tmp_path):
    """Checking puts a column back only when it changed it: assigning a column of pandas' 2-D block splits the
    block (a copy of the table), and the float32 features would no longer be readable as one array without a copy."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(1000, 6)).astype(np.float32), columns=[f"f{i}" for i in range(6)])
    df["split"] = "train"
    df["n"] = np.arange(1000)
    df.to_parquet(tmp_path / "t.parquet")
    t = load_table("samples", tmp_path / "t.parquet", {"split": "key", "n": "count"},
                   {f"f{i}": "real" for i in range(6)})
    x = t[[f"f{i}" for i in range(6)]].to_numpy()
    assert x.dtype == np.float32 and np.shares_memory(x, t["f0"].to_numpy())  # a view of the table, no copy
    assert t["n"].dtype == np.int64
    np.testing.assert_array_equal(x, df[[f"f{i}" for i in range(6)]].to_numpy())
