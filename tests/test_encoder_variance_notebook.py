"""Notebook 02 executed with papermill: the sample run (once per suite), one new run (over HTTP), one bad input.

Everything else about the pipeline is checked in-process in test_encoder_variance.py.
"""

import functools
import html
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import nbformat
import numpy as np
import pytest
from face import pipeline

from helpers.encoder_variance import diagnosis as dx
from helpers.encoder_variance import lab
from helpers.encoder_variance import simulate as sim
from helpers.io import save_npz
from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = dx.NOTEBOOK


def rendered_what_to_change(executed) -> str:
    """The Markdown the "What to change" cell rendered from the run."""
    cell = next(c for c in executed.cells if c.cell_type == "code" and "what_to_change(" in c.source)
    return "".join(o.data["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {}))


def items(text: str) -> dict[str, str]:
    """{finding id: its rendered item} of a rendered "What to change"."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\d+\. \*\*(\w+)\*\*.*$", text, flags=re.M)}


def check_what_to_change(summary: dict, executed) -> dict[str, str]:
    """The rendered "What to change" lists exactly the detected findings, each with its action from
    summary.json (no other finding id appears); returns its items."""
    text = rendered_what_to_change(executed)
    detected = {k for k, f in summary["findings"].items() if f["status"] == "detected"}
    assert set(items(text)) == detected
    for k, f in summary["findings"].items():
        if k in detected:
            assert f["action"] and html.escape(f["action"]) in items(text)[k]
        else:
            assert f["action"] == "" and k not in text
    if not detected:
        assert text.startswith("**Nothing to change.**")
    return items(text)


@pytest.mark.xdist_group(NAME)
def test_notebook_on_the_sample(sample_execution):
    s, executed_path = sample_execution(NAME)
    f = s["findings"]
    assert list(f) == list(dx.FINDING_IDS)
    assert f["stochasticity_collapsed"]["status"] == "detected"
    assert {f[k]["status"] for k in ("representation_collapse", "sampling_noise_dominates",
                                     "dimensional_collapse", "inactive_units")} == {"not_detected"}
    assert s["metrics"]["decision"] == "collapsed to deterministic"
    assert s["metrics"]["sampling_share"] < dx.STOCHASTIC_SHARE_MIN < 0.5 < s["metrics"]["between_share"]
    # the lab
    sweep = {round(r["kl_weight"], 6): r["decision"] for r in s["metrics"]["lab_kl_sweep"]}
    assert sweep[1e-4] == "collapsed to deterministic" and sweep[1.0] == "stochastic but not diverse"
    passes = s["metrics"]["lab_repeat_pass_variance"]
    assert passes["eval"]["variational, KL 1e-3"] == 0.0 < passes["eval+sample"]["variational, KL 1e-3"]
    assert (executed_path.parent / "figures" / "kl_sweep.png").exists()
    # the banner is the first thing the diagnosis prints; no cell fails, the exercises included
    executed = nbformat.read(executed_path, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    load = next(c for c in executed.cells if "dx.load_inputs(" in c.source)
    assert load.outputs[0].text.startswith(">>> These are the BUNDLED SAMPLE RUN's files")
    # the exercises ran with their solutions in place: every graded test cell executed (and none failed, above)
    graded = [c for c in executed.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    assert len(graded) == 4 and all(c.execution_count for c in graded)
    # what to change: rendered from the detected findings, with the lab's measured trade-off
    todo = check_what_to_change(s, executed)
    rows = {r["kl_weight"]: r for r in s["metrics"]["lab_kl_sweep"]}
    best = min(rows, key=lambda w: rows[w]["task_mse"])
    w = min(k for k, r in rows.items() if r["decision"] == "healthy")  # the weight it recommends
    cost = rows[w]["task_mse"] / rows[best]["task_mse"] - 1
    item = todo["stochasticity_collapsed"]
    assert f"KL {lab.kl(w)} is the smallest weight" in item and f"at task MSE {rows[w]['task_mse']:.4f}" in item
    assert f"{cost:+.0%} against the best of the sweep ({rows[best]['task_mse']:.4f} at KL {lab.kl(best)}" in item
    assert cost > 0.05 and "Raise the weight only if you need the samples" in item
    # the source's causes, answered with the lab's numbers
    text = "".join(o.text for o in outputs if o.output_type == "stream")
    between = [rows[k]["between"] for k in sorted(rows)]
    assert between == sorted(between, reverse=True) and "a low KL weight does not lower diversity here" in text
    inits = s["metrics"]["lab_logvar_init"]
    assert {r["logvar_init"] for r in inits} == {0.0, *lab.LOGVAR_INITS}
    assert {r["decision"] for r in inits} == {"collapsed to deterministic"} and "the initialisation is not the cause" in item
    # the source's numbers are quoted as the source's in Markdown, never as this run's
    for c in executed.cells:
        if c.cell_type == "markdown" and re.search(r"0\.15|0\.05", c.source):
            assert "source" in c.source


@pytest.fixture
def served(elsewhere):
    """``http://127.0.0.1:<port>/`` serving the working directory of the test."""
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(elsewhere)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_notebook_on_a_new_run_over_http(tmp_path, elsewhere, served, warm_kernel):
    """Seed 7 (not the sample's): the KL-1 encoder's means alone, as (N, T, D) tokens with string
    puzzle ids, compared with a healthy encoder; the lab off. Both files are read over HTTP (fsspec): the
    summary names the URLs, and the findings and metrics are the in-process pipeline's on the local files."""
    cfg = sim.with_seed(7)
    enc, _ = sim.train_encoder(1.0, True, cfg)
    demos, group = sim.evaluation_set(cfg)
    z = sim.embed(enc, demos, cfg.n_passes, seed=7)["z"]
    np.savez(elsewhere / "tokens.npz", z=z.reshape(len(z), 4, 8), group=np.array([f"puzzle {g}" for g in group]))
    save_npz(elsewhere / "healthy.npz", sim.simulate("healthy_variational", cfg))
    urls = {"embeddings": f"{served}tokens.npz", "compare": f"[{served}healthy.npz]"}
    s = execute(NAME, {**urls, "run_demos": False}, tmp_path / "out", cwd=elsewhere, kernel_manager=warm_kernel)
    assert s["inputs"] == {"embeddings": f"{served}tokens.npz", "compare[0]": f"{served}healthy.npz"}
    local = pipeline(dx, embeddings=str(elsewhere / "tokens.npz"), compare=[str(elsewhere / "healthy.npz")],
                     output_dir=str(tmp_path / "local")).summary.to_dict()
    assert s["findings"] == local["findings"] and s["metrics"] == local["metrics"]
    f = s["findings"]
    assert f["sampling_noise_dominates"]["status"] == f["stochasticity_collapsed"]["status"] == "not_applicable"
    assert "neither 'z_samples' nor 'logvar'" in f["stochasticity_collapsed"]["message"]
    assert f["dimensional_collapse"]["status"] == "detected"
    assert f["inactive_units"]["status"] == "not_detected" and "average unit" in f["inactive_units"]["message"]
    assert s["metrics"]["units"] == 32 and "sampling not measured" in s["metrics"]["decision_reason"]
    assert not s["sample_run"] and set(s["inputs"]) == {"embeddings", "compare[0]"}
    assert "lab_kl_sweep" not in s["metrics"]
    todo = check_what_to_change(s, nbformat.read(tmp_path / "out" / f"{NAME}.ipynb", as_version=4))
    assert set(todo) == {"dimensional_collapse"} and "Measured in the lab" not in todo["dimensional_collapse"]
