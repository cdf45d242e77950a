"""Notebook 04's diagnosis on runs its simulator did not make: healthy, saturated, real training runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from face import defaults, pipeline
from sklearn.metrics import roc_curve

from helpers.findings import SAMPLE_BANNER, what_to_change
from helpers.io import InputError
from helpers.roc_collapse import diagnosis as dx
from helpers.roc_collapse import low_fpr as lf


def status(found):
    return {f.id: f.status for f in found}


def make_run(tmp_path, n_pos=4000, n_neg=40000, epochs=6, seed=0, scale=lambda e: 1.0 + 0.1 * e,
             neg_mu=-3.0, pos_mu=3.0, dtype=None, paired=True, unpaired_shift=0.0, logits=True, scores=True):
    """Per-epoch scores of a model whose ranking stays fixed and only its confidence grows."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(pos_mu, 1.0, n_pos)
    neg = rng.normal(neg_mu, 1.0, n_neg)
    n_paired = n_pos if paired else 0
    pair = np.r_[np.arange(n_paired), np.full(n_neg - n_paired, -1), np.arange(n_pos)]
    neg[n_paired:] += unpaired_shift
    frames = []
    for e in range(epochs):
        logit = scale(e) * np.r_[neg, pos] + rng.normal(0, 0.05, n_pos + n_neg)
        t = torch.from_numpy(logit)
        score = (torch.sigmoid(t.to(getattr(torch, dtype))).double() if dtype else torch.sigmoid(t)).numpy()
        f = pd.DataFrame({"epoch": e, "label": np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)], "pair_id": pair,
                          "sample_id": np.arange(n_pos + n_neg)})
        if logits:
            f["logit"] = logit
        if scores:
            f["score"] = score
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    df.to_parquet(tmp_path / "scores.parquet")
    return df


def sk_history(df, fpr_targets, tpr_targets, source="score"):
    rows = []
    for e, g in df.groupby("epoch"):
        fpr, tpr, _ = roc_curve(g["label"], g[source], drop_intermediate=False)
        row = {"epoch": int(e), "train_loss": 1.0 / (e + 1)}
        for t in fpr_targets:
            row[f"tpr@fpr{t}"] = round(float(tpr[fpr <= t].max()), 5)
        for t in tpr_targets:
            row[f"fpr@tpr{t}"] = round(float(fpr[tpr >= t].min()), 7)
        rows.append(row)
    return rows


def params(tmp_path, **kw):
    return {"history": "", "scores": str(tmp_path / "scores.parquet"), "fpr_targets": [1e-3, 1e-2],
            "tpr_targets": [0.5, 0.9], "seen_ids": "", "roc_function": "", "n_bootstrap": 200, "callable_timeout": 60.0,
            "output_dir": str(tmp_path / "out"), "run_demos": False, "seed": 0, **kw}


def run(tmp_path, **kw):
    """The notebook's pipeline through the face of ``dx``: (diagnosis, findings by id)."""
    r = pipeline(dx, **params(tmp_path, **kw))
    return r.diagnosis, r.found


def sklearn_roc_module(tmp_path):
    (tmp_path / "myroc.py").write_text(
        "from sklearn.metrics import roc_curve\n\n\ndef roc(scores, labels):\n"
        "    return roc_curve(labels, scores, drop_intermediate=False)\n")
    return f"{tmp_path / 'myroc.py'}:roc"


def test_healthy_run_detects_nothing(tmp_path):
    df = make_run(tmp_path, scale=lambda e: 1.0 + 0.05 * e)
    (tmp_path / "h.json").write_text(json.dumps(sk_history(df, [1e-3, 1e-2], [0.5, 0.9])))
    seen = pd.DataFrame({"epoch": np.repeat([0, 1], 500), "sample_id": np.tile(np.arange(500), 2),
                         "worker": np.tile(np.arange(500) % 4, 2)})
    seen.to_csv(tmp_path / "seen.csv", index=False)
    d, found = run(tmp_path, history=str(tmp_path / "h.json"), seen_ids=str(tmp_path / "seen.csv"),
                   roc_function=sklearn_roc_module(tmp_path))
    assert [k for k, f in found.items() if f.status == "detected"] == []
    assert all(f.status == "not_detected" for f in found.values()), status(found.values())
    assert d.score_dtype == "float64" and d.comparison["status"].eq("matches").all()


def test_float32_saturation_is_found_and_the_logits_recover_the_ranking(tmp_path):
    # margins grow until float32 sigmoid returns exactly 1.0 for the top of both classes
    make_run(tmp_path, neg_mu=-1.5, pos_mu=2.0, scale=lambda e: 2.0 + 3.0 * e, dtype="float32", epochs=6)
    d, found = run(tmp_path)
    f = found["score_saturation_ties"]
    assert f.status == "detected" and d.score_dtype == "float32"
    assert "float32 sigmoid is exactly 1 from logit 16.64" in f.message
    first = f.evidence["predicted_cliff_epoch"]["0.001"]
    a = d.audit.set_index("epoch")
    # independent check: the first epoch where more than floor(1e-3 x n_neg) negatives have a float32 score of 1.0
    g = pd.read_parquet(tmp_path / "scores.parquet")
    at_one = g[(g.label == 0) & (g.score == 1.0)].groupby("epoch").size().reindex(d.epochs, fill_value=0)
    assert first == int(at_one[at_one > 40].index.min())
    assert a.loc[first, "tpr@fpr0.001"] == 0.0
    assert found["logits_recover_ranking"].status == "detected"
    assert d.value("logit", "tpr@fpr0.001")[first] > 0.5
    assert found["late_collapse"].status == "detected"


def bf16_training_run(n=10000, epochs=10, seed=0):
    """A real small training run: an MLP on make_classification, evaluated under bfloat16 autocast each epoch."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    from helpers.training import FastAdam

    x, y = make_classification(n_samples=n, n_features=20, n_informative=8, class_sep=1.5, flip_y=0.0,
                               weights=[0.6], random_state=seed)
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float32), y, test_size=0.5, random_state=seed, stratify=y)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = FastAdam(model.parameters(), lr=0.01)
    xt, yt, xv = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.float32)), torch.from_numpy(xte)
    frames = []
    for e in range(epochs):
        for idx in torch.randperm(len(xt)).split(256):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]).squeeze(-1), yt[idx]).backward()
            opt.step()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logit = model(xv).squeeze(-1)
            score = torch.sigmoid(logit)
        frames.append(pd.DataFrame({"epoch": e, "label": yte, "logit": logit.float().numpy(),
                                    "score": score.float().numpy()}))
    return pd.concat(frames, ignore_index=True)


def test_real_bf16_training_run_findings_match_direct_computations(tmp_path):
    df = bf16_training_run()
    df.to_csv(tmp_path / "scores.csv", index=False)
    rows = sk_history(df, [0.01], [0.5])
    rows[3]["tpr@fpr0.01"] = 0.25  # one wrong logged value
    for r in rows[5:]:
        r.pop("tpr@fpr0.01")  # not logged for the later epochs
    (tmp_path / "h.json").write_text(json.dumps({"history": rows}))
    d, found = run(tmp_path, scores=str(tmp_path / "scores.csv"), history=str(tmp_path / "h.json"),
                   fpr_targets="[0.01, 0.05]", tpr_targets="[0.5]")
    assert d.score_dtype == "bfloat16"
    # saturation finding == a direct tie-order computation: positives-first cumulative sums vs scikit-learn
    gaps = []
    for _, g in df.groupby("epoch"):
        y, s = g["label"].to_numpy(), g["score"].to_numpy()
        order = np.lexsort((-y, -s))
        tps, fps = np.cumsum(y[order]), np.cumsum(1 - y[order])
        for t in (0.01, 0.05):
            naive = tps[fps / fps[-1] <= t].max(initial=0) / tps[-1]
            fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
            gaps.append(naive - tpr[fpr <= t].max())
    assert (found["score_saturation_ties"].status == "detected") == (max(gaps) >= dx.TIE_GAP)
    lm = found["logged_metric_mismatch"]
    assert lm.status == "detected" and lm.evidence["differ"] == 1 and "epoch 3" in lm.message
    assert lm.evidence["not_checked"] == 5
    assert found["roc_implementation_mismatch"].status == "not_applicable"
    assert found["worker_duplication"].status == "not_applicable"
    assert found["paired_control_shortcut"].status == "not_applicable"
    assert "pair_id" in found["paired_control_shortcut"].message


def test_runs_without_logits_or_scores(tmp_path):
    make_run(tmp_path, logits=False, epochs=3)
    d, found = run(tmp_path)
    assert d.sources == ["score"] and found["logits_recover_ranking"].status == "not_applicable"
    assert "logit" in found["logits_recover_ranking"].message
    make_run(tmp_path, scores=False, epochs=3)
    d, found = run(tmp_path)
    assert d.sources == ["logit"] and d.score_dtype is None
    assert found["score_saturation_ties"].status == "not_detected"


def test_paired_control_shortcut(tmp_path):
    # unpaired negatives score higher than the lenses' own controls: the evaluation hides false positives
    make_run(tmp_path, n_pos=3000, n_neg=9000, unpaired_shift=1.5, epochs=2)
    d, found = run(tmp_path)
    f = found["paired_control_shortcut"]
    assert f.status == "detected" and "Unpaired negatives" in f.message
    from scipy.stats import fisher_exact

    p = d.paired
    g = pd.read_parquet(tmp_path / "scores.parquet")
    neg = g[(g.epoch == g.epoch.max()) & (g.label == 0)]
    tail = neg["logit"] >= neg["logit"].nlargest(90).min()  # top 1% of 9,000 negatives
    is_paired = neg["pair_id"] >= 0
    table = [[(tail & is_paired).sum(), (~tail & is_paired).sum()], [(tail & ~is_paired).sum(), (~tail & ~is_paired).sum()]]
    assert p["p_value"] == pytest.approx(fisher_exact(table)[1])
    assert p["tail_rate_unpaired"] > 3 * p["tail_rate_paired"]
    make_run(tmp_path, n_pos=3000, n_neg=3000, epochs=2)  # every negative is a paired control
    _, found = run(tmp_path)
    assert found["paired_control_shortcut"].status == "not_applicable"
    assert "every negative is a paired control" in found["paired_control_shortcut"].message


def test_worker_duplication_and_roc_function_mismatch(tmp_path):
    make_run(tmp_path, epochs=2, dtype="bfloat16")
    seen = pd.DataFrame({"epoch": 0, "sample_id": np.tile(np.arange(100), 4), "worker": np.repeat(np.arange(4), 100)})
    seen.to_parquet(tmp_path / "seen.parquet")
    (tmp_path / "naive.py").write_text(
        "import numpy as np\n\n\ndef roc(s, y):\n    o = np.argsort(-s, kind='stable')\n    y = y[o]\n"
        "    return np.cumsum(1 - y) / (1 - y).sum(), np.cumsum(y) / y.sum(), s[o]\n")
    d, found = run(tmp_path, seen_ids=str(tmp_path / "seen.parquet"), roc_function=f"{tmp_path / 'naive.py'}:roc")
    w = found["worker_duplication"]
    assert w.status == "detected" and "4.0 times" in w.message and "all 4 workers" in w.message
    r = found["roc_implementation_mismatch"]
    assert r.status == "detected" and "ties across classes, positives first" in r.message


@pytest.mark.parametrize("kw, problem", [
    ({"fpr_targets": "[2]"}, "fpr_targets: every rate must be a number in (0, 1), got 2"),
    ({"fpr_targets": "[1e-4,"}, "fpr_targets: expected a list like [1e-4, 1e-3], could not parse"),
    ({"fpr_targets": []}, "fpr_targets: needs at least one rate"),
    ({"fpr_targets": "[1e-4, often]"}, "fpr_targets: expected numbers, got 'often'"),
    ({"fpr_targets": 0.001}, "fpr_targets: expected a list"),
    ({"tpr_targets": "abc"}, "tpr_targets: expected a list"),
    ({"tpr_targets": "0.5"}, "tpr_targets: expected a list"),  # one list parser: a bare number is not a list
    ({"n_bootstrap": 5}, "n_bootstrap: must be in"),
    ({"seed": "x"}, "seed: expected an integer"),
    ({"roc_function": "nope_module_x:f"}, "roc_function: cannot import"),
    ({"history": "missing.json"}, "history: "),
])
def test_bad_parameters_fail_in_one_line(tmp_path, kw, problem):
    make_run(tmp_path, epochs=1, n_pos=50, n_neg=50)
    with pytest.raises(InputError) as e:
        dx.load_inputs(params(tmp_path, **kw))
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_bad_scores_tables(tmp_path):
    bad = pd.DataFrame({"epoch": [0, 0, 1, 1], "label": [0, 1, 1, 1], "score": [0.1, 0.9, 0.5, 0.6]})
    bad.to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(InputError, match="epoch 1 has no negatives"):
        dx.load_inputs(params(tmp_path))
    bad.drop(columns="score").to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(InputError, match="needs a 'score' or a 'logit' column"):
        dx.load_inputs(params(tmp_path))
    bad.assign(score=[0.1, np.nan, 0.2, 0.3]).to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(InputError, match="'score' has 1 NaN/inf"):
        dx.load_inputs(params(tmp_path))
    bad.assign(label=[0, 2, 0, 1]).to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(InputError, match="only 0 and 1"):
        dx.load_inputs(params(tmp_path))


def test_target_lists_accept_text_and_metric_names(tmp_path):
    make_run(tmp_path, epochs=1, n_pos=50, n_neg=50)
    p, _ = dx.load_inputs(params(tmp_path, fpr_targets="[1e-4, 0.001]", tpr_targets=[0.85, "0.5"]))
    assert p["fpr_targets"] == [1e-4, 1e-3] and p["tpr_targets"] == [0.5, 0.85]
    p, _ = dx.load_inputs(params(tmp_path, fpr_targets="[0.01, 1e-3, 0.01]", tpr_targets="[]"))
    assert p["fpr_targets"] == [1e-3, 1e-2] and p["tpr_targets"] == []  # sorted, without repeats
    assert lf.rate_str(1e-4) == "1e-4" and lf.rate_str(0.001) == "0.001" and lf.rate_str(0.85) == "0.85"


def test_the_samples_companions_are_dropped_and_a_chimera_refused(tmp_path):
    """Your scores with the sample's history, loader log and ROC code (the notebook's defaults): those
    are not used and the run says so; the sample's scores with your history would be a chimera."""
    make_run(tmp_path, epochs=1, n_pos=50, n_neg=50)
    d = defaults(dx.NOTEBOOK)
    p, run = dx.load_inputs({**d, "scores": str(tmp_path / "scores.parquet"), "n_bootstrap": 200,
                             "output_dir": str(tmp_path / "out")})
    assert set(run.dropped) == {"history", "seen_ids", "roc_function"}
    assert run.history is None and run.seen is None and run.roc_function is None and p["history"] == ""
    (tmp_path / "h.json").write_text('[{"epoch": 0, "val_loss": 1.0}]')
    with pytest.raises(InputError) as e:
        dx.load_inputs({**d, "history": str(tmp_path / "h.json")})
    assert str(e.value).startswith("scores: still points at the bundled sample run while history is yours")


def test_the_face_and_the_inputs_banner(tmp_path):
    assert set(dx.PARAMETER_TYPES) == set(defaults(dx.NOTEBOOK))
    assert all(isinstance(v, dx.PARAMETER_TYPES[k]) for k, v in defaults(dx.NOTEBOOK).items())
    make_run(tmp_path, epochs=2, n_pos=300, n_neg=3000)
    (tmp_path / "seen.csv").write_text("epoch,sample_id\n0,1\n0,2\n")
    r = pipeline(dx, **params(tmp_path, seen_ids=str(tmp_path / "seen.csv"),
                              roc_function="helpers.roc_collapse.low_fpr:curve"))
    assert list(r.found) == list(dx.FINDING_IDS)
    assert r.run.inputs == {"scores": tmp_path / "scores.parquet", "seen_ids": tmp_path / "seen.csv"}
    assert SAMPLE_BANNER not in r.banner and "[bundled sample]" not in r.banner
    assert f"scores: {tmp_path / 'scores.parquet'}" in r.banner
    assert "2 epochs x 3,300 rows" in r.banner and "roc_function: helpers.roc_collapse.low_fpr:curve" in r.banner
    assert r.summary.metrics == dx.metrics(r.diagnosis) and r.summary.metrics["mean_multiplicity"] == 1.0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["findings"].keys() == set(dx.FINDING_IDS)
    assert not hasattr(dx, "headline_metrics") and not hasattr(dx, "check_parameters")



# ----------------------------------------------------------------------------- evaluation rows scored twice
def loader_order(n, workers, shard_workers):
    """The sample ids a real DataLoader yields in one evaluation epoch over an IterableDataset sharded by rank
    (one rank) and, with ``shard_workers``, by worker (the fix)."""
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Eval(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            ids = range(n)
            if shard_workers and info is not None:
                ids = ids[info.id::info.num_workers]
            yield from ids

    dl = DataLoader(Eval(), batch_size=1000, num_workers=workers, multiprocessing_context="fork")
    return np.concatenate([b.numpy() for b in dl])


def rows_for(df, order):
    """The scores table as the evaluation wrote it: one row per yielded id, per epoch."""
    frames = [g.set_index("sample_id").loc[order].reset_index() for _, g in df.groupby("epoch")]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.notebook  # a real DataLoader forks its worker processes
def test_duplicated_eval_rows_are_diagnosed_and_counted_once(tmp_path):
    """The worker bug in the evaluation loader: every validation sample is scored once per worker. The run is
    diagnosed (it was refused: "a sample_id appears twice in one epoch"), and every check counts each sample
    once: the same negatives, the same ROC, the same intervals as the loader that shards by worker."""
    df = make_run(tmp_path, n_pos=2000, n_neg=20000, epochs=3, dtype="bfloat16")
    fixed = rows_for(df, loader_order(22000, 2, shard_workers=True))
    fixed.to_parquet(tmp_path / "fixed.parquet")
    buggy = rows_for(df, loader_order(22000, 2, shard_workers=False))
    assert len(buggy) == 2 * len(df)
    buggy.to_parquet(tmp_path / "buggy.parquet")
    d_ok, f_ok = run(tmp_path, scores=str(tmp_path / "fixed.parquet"), fpr_targets="[1e-4, 1e-3]")
    d, found = run(tmp_path, scores=str(tmp_path / "buggy.parquet"), fpr_targets="[1e-4, 1e-3]")
    assert f_ok["duplicated_eval_rows"].status == "not_detected"
    f = found["duplicated_eval_rows"]
    assert f.status == "detected" and f.severity == "critical"
    assert f.evidence["mean_multiplicity"] == 2.0 and f.evidence["rows"] == 2 * f.evidence["distinct_rows"]
    assert "allows 2 of 20,000 distinct negatives, where the rows would allow 4 of 40,000" in f.message
    assert "get_worker_info" in f.action and "rests on 2 distinct negatives, not the 4" in f.action
    # every check counts each sample once: the de-duplicated run's numbers exactly
    assert (d.n_neg, d.n_pos) == (d_ok.n_neg, d_ok.n_pos) == (20000, 2000)
    cols = ["source", "epoch", "fpr_target", "low", "high", "allowed_negatives"]
    pd.testing.assert_frame_equal(d.intervals[cols], d_ok.intervals[cols])
    pd.testing.assert_frame_equal(d.values.sort_values(["source", "epoch", "metric"]).reset_index(drop=True),
                                  d_ok.values.sort_values(["source", "epoch", "metric"]).reset_index(drop=True))
    assert found["too_few_negatives"].message == f_ok["too_few_negatives"].message
    assert {k: v.status for k, v in found.items() if k != "duplicated_eval_rows"} == \
        {k: v.status for k, v in f_ok.items() if k != "duplicated_eval_rows"}
    # what to change names the detected findings' actions and nothing else
    text = what_to_change(found.values(), support=dx.lab_support(found, {}), checks=len(found))
    detected = [k for k, v in found.items() if v.detected]
    assert "duplicated_eval_rows" in detected and len(text.splitlines()) == len(detected)
    assert all((f"**{k}**" in text) == (k in detected) for k in found)


def test_sampler_padding_repeats_a_few_rows_and_a_label_conflict_is_refused(tmp_path):
    """DistributedSampler pads every rank to the same length with repeats of the first samples: a few
    sample_ids are scored twice. Detected as a warning that names the count; the copies' scores differ
    here (another batch, another rounding), and the first is kept."""
    from torch.utils.data import DistributedSampler

    df = make_run(tmp_path, n_pos=1001, n_neg=9000, epochs=2)
    order = np.concatenate([list(DistributedSampler(range(10001), num_replicas=4, rank=r, shuffle=False))
                            for r in range(4)])
    rows = rows_for(df, order)
    repeat = rows.duplicated(["epoch", "sample_id"])
    rows.loc[repeat, "logit"] += 1e-3
    rows.to_parquet(tmp_path / "padded.parquet")
    d, found = run(tmp_path, scores=str(tmp_path / "padded.parquet"))
    f = found["duplicated_eval_rows"]
    assert f.status == "detected" and f.severity == "warning" and f.evidence["rows"] - f.evidence["distinct_rows"] == 6
    assert f.message.startswith("6 of the 20,008 evaluation rows repeat a sample") and "first copy is kept" in f.message
    assert f.action.startswith("Drop repeated sample_ids before the ROC")
    kept = d.values[(d.values["source"] == "logit")]
    _, f_ok = run(tmp_path)  # the same run scored once per sample
    assert found["too_few_negatives"].message == f_ok["too_few_negatives"].message and len(kept)
    rows.loc[rows.index[repeat.to_numpy()][0], "label"] = 1 - rows.loc[rows.index[repeat.to_numpy()][0], "label"]
    rows.to_parquet(tmp_path / "padded.parquet")
    with pytest.raises(InputError, match=r"sample_id 0 has both labels in epoch 0: a sample's label cannot change"):
        dx.load_inputs(params(tmp_path, scores=str(tmp_path / "padded.parquet")))


def test_a_metric_logged_on_the_repeated_rows_is_explained_by_them(tmp_path):
    """An evaluation that repeats some negatives logs a different tpr@fpr; the recomputation counts each sample
    once and says the rows as given reproduce the logged value."""
    df = make_run(tmp_path, n_pos=3000, n_neg=20000, epochs=2, neg_mu=-1.0, pos_mu=1.5)
    neg_ids = df.loc[(df.epoch == 0) & (df.label == 0), "sample_id"].to_numpy()[:8000]
    rows = rows_for(df, np.r_[np.arange(23000), neg_ids, neg_ids])  # a third of the negatives scored 3 times
    rows.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "h.json").write_text(json.dumps(sk_history(rows, [1e-2], [0.5])))
    d, found = run(tmp_path, scores=str(tmp_path / "rows.parquet"), history=str(tmp_path / "h.json"),
                   fpr_targets="[0.01]", tpr_targets="[0.5]")
    lm = found["logged_metric_mismatch"]
    assert lm.status == "detected" and "(the rows as given, with their repeated sample_ids, reproduce it)" in lm.message
    dup = found["duplicated_eval_rows"]
    assert dup.status == "detected" and "on the rows as given" in dup.message


# ----------------------------------------------------------------------------- one resolution rule
def test_too_few_negatives_follows_the_one_rule_not_the_count(tmp_path):
    """Six negatives set tpr@fpr1e-4 of 65,090, but the positives sit far above them: the interval is narrow,
    so the rule (an interval of at most MAX_CI_WIDTH) finds it resolved. The old count rule (fewer than 10
    negatives) asked for 100,000 negatives here while reporting a narrow interval."""
    make_run(tmp_path, n_pos=4000, n_neg=65090, epochs=2, neg_mu=-4.0, pos_mu=4.0)
    d, found = run(tmp_path, fpr_targets="[1e-4, 1e-3]")
    table = dx.resolution_table(d).set_index("metric")
    assert table.loc["tpr@fpr1e-4", "allowed_negatives"] == 6 and table.loc["tpr@fpr1e-4", "width"] < dx.MAX_CI_WIDTH
    f = found["too_few_negatives"]
    assert f.status == "not_detected" and f.action == "" and "100,000" not in f.message
    assert f"within {dx.MAX_CI_WIDTH:g}" in f.message


def test_too_few_negatives_the_finding_the_exercise_and_the_advice_agree(tmp_path):
    """A run whose tpr@fpr1e-4 interval is wide: the finding, its action and the notebook's Exercise 2 solution
    (executed here on the same diagnosis) apply the same rule to the same numbers."""

    from helpers.paths import NOTEBOOKS

    make_run(tmp_path, n_pos=3000, n_neg=30000, epochs=3, neg_mu=-1.0, pos_mu=1.0, scale=lambda e: 1.0)
    r = pipeline(dx, **params(tmp_path, fpr_targets="[1e-4, 1e-3]"))
    d, f = r.diagnosis, r.found["too_few_negatives"]
    table = dx.resolution_table(d).set_index("metric")
    assert f.status == "detected" and not table.loc["tpr@fpr1e-4", "resolved"]
    row = table.loc["tpr@fpr1e-4"]
    assert f"up to {row['width']:.3f} at epoch {row['widest_epoch']}" in f.message
    assert f"({row['low']:.3f} to {row['high']:.3f} at epoch {row['widest_epoch']}" in f.action
    assert f"about {int(row['negatives_needed']):,} negatives" in f.action and f"within {dx.MAX_CI_WIDTH:g}" in f.action
    cells = json.loads((NOTEBOOKS / "04_roc_collapse.ipynb").read_text())["cells"]
    exercise = next("".join(c["source"]) for c in cells if c["metadata"].get("nbgrader", {}).get("grade_id") == "ex2_answer")
    ns = {"dx": dx, "diag_a": d, "run_demos": True, "display": lambda *a: None}
    exec(exercise, ns)
    assert set(ns["answer_2"]) == set(table.loc[table["resolved"], "fpr_target"])


# ----------------------------------------------------------------------------- large runs (issue 17)
def test_repeated_keys_by_counting_are_pandas_duplicated():
    """The counting shortcut for integer ids gives df.duplicated's mask on every kind of table: repeats or
    none, negative ids, ids too sparse to count, string ids."""
    rng = np.random.default_rng(30)
    for trial in range(300):
        n = int(rng.integers(1, 80))
        ids = rng.integers(-4 if trial % 5 == 0 else 0, int(rng.integers(1, 120)), n)
        if trial % 11 == 0:
            ids = ids * 10**9  # too sparse to count: hashed
        df = pd.DataFrame({"epoch": rng.integers(0, 4, n).astype(np.int64),
                           "sample_id": ids.astype(str) if trial % 7 == 0 else ids})
        np.testing.assert_array_equal(dx._repeated_keys(df), df.duplicated(["epoch", "sample_id"]).to_numpy())
    unique = pd.DataFrame({"epoch": np.repeat(np.arange(3), 50), "sample_id": np.tile(np.arange(50), 3)})
    assert not dx._repeated_keys(unique).any()
    for ids in (np.array([2**63 + 5, 2**63 + 5, 7], dtype=np.uint64), pd.array([4, 4, 9], dtype="Int64")):
        df = pd.DataFrame({"epoch": np.zeros(3, np.int64), "sample_id": ids})
        assert dx._repeated_keys(df).tolist() == [False, True, False]


def test_scores_out_of_epoch_order_with_repeats_load_as_sorted_and_counted_once(tmp_path):
    """Epochs out of order in the file: the table is sorted by epoch (stably), the first copy of a repeated
    (epoch, sample_id) is kept, the rows as given stay for duplicated_eval_rows; a table already in order
    is kept as it is."""
    df = make_run(tmp_path, n_pos=300, n_neg=3000, epochs=3)
    shuffled = pd.concat([df[df["epoch"] == 2], df[df["epoch"] == 0].iloc[:100], df[df["epoch"] == 1],
                          df[df["epoch"] == 0]], ignore_index=True)  # 100 rows of epoch 0 scored twice
    first = np.arange(3300, 3400)  # the first copies of epoch 0's 100 repeated rows, made to differ
    shuffled.loc[first, "score"] = shuffled.loc[first, "score"] * 0.5
    shuffled.to_parquet(tmp_path / "shuffled.parquet")
    _, run_ = dx.load_inputs(params(tmp_path, scores=str(tmp_path / "shuffled.parquet")))
    given = shuffled.sort_values("epoch", kind="stable").reset_index(drop=True)
    assert run_.scores_as_given["sample_id"].tolist() == given["sample_id"].tolist()
    want = given[~given.duplicated(["epoch", "sample_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(run_.scores[want.columns], want, check_dtype=False)
    assert len(run_.scores) == len(df) and (run_.scores.loc[run_.scores["epoch"] == 0, "score"].iloc[:100]
                                            == shuffled.loc[first, "score"].to_numpy()).all()
    _, in_order = dx.load_inputs(params(tmp_path))
    assert in_order.scores_as_given is None
    pd.testing.assert_frame_equal(in_order.scores[df.columns], df, check_dtype=False)


def test_multiplicity_of_distinct_samples_is_the_counted_table():
    from helpers.roc_collapse import loader_audit as la

    seen = pd.DataFrame({"epoch": np.r_[np.zeros(5, int), np.ones(3, int), np.full(4, 3)],
                         "sample_id": np.r_[np.arange(5), np.arange(3), np.arange(4)]})
    pd.testing.assert_frame_equal(la.multiplicity(seen, distinct=True), la.multiplicity(seen), check_exact=True)
    assert la.multiplicity(seen, distinct=True)["rows"].tolist() == [5, 3, 4]


def test_a_drawn_roc_keeps_every_point_of_a_small_curve_and_every_rise_of_a_large_one():
    from helpers.roc_collapse import figures as figs

    rng = np.random.default_rng(31)
    y = (rng.random(200_000) < 0.3).astype(int)
    c = lf.curve(y, rng.normal(size=len(y)) + 2 * y)  # continuous scores: about 200,000 points
    fpr, tpr = np.maximum(c.fpr, 1e-6), c.tpr
    small = figs.steps_to_draw(fpr[:5000], tpr[:5000])
    np.testing.assert_array_equal(small[0], fpr[:5000])
    f, t = figs.steps_to_draw(fpr, tpr)
    assert len(f) <= figs.MAX_STEP_POINTS and (f[0], t[0], f[-1], t[-1]) == (fpr[0], tpr[0], fpr[-1], tpr[-1])
    assert np.all(np.diff(f) >= 0) and set(zip(f, t, strict=True)) <= set(zip(fpr, tpr, strict=True))
    # no rise is lost: at the end of every bin of log FPR (4,000 bins, under a pixel each) the drawn curve
    # reaches the TPR the full curve reaches there; only steps inside a bin merge
    x = np.log10(fpr)
    bins = np.floor((x - x[0]) / (x[-1] - x[0]) * (figs.MAX_STEP_POINTS // 2 - 1))
    ends = np.r_[np.flatnonzero(np.diff(bins)), len(x) - 1]
    assert len(ends) > 1000
    for i in ends[::7]:
        assert lf.tpr_at_fpr(f, t, fpr[i]) == lf.tpr_at_fpr(fpr, tpr, fpr[i]) == tpr[i]
    # the low-FPR end, where a bin holds one FPR value, is drawn exactly: each value's lowest and highest TPR
    low = pd.DataFrame({"fpr": fpr, "tpr": tpr})[fpr < 1e-3].groupby("fpr")["tpr"].agg(["min", "max"])
    kept = set(zip(f, t, strict=True))
    assert len(low) > 100 and all((x, r["min"]) in kept and (x, r["max"]) in kept for x, r in low.iterrows())


def test_a_large_run_shows_which_epoch_the_diagnosis_is_on(tmp_path, capsys):
    make_run(tmp_path, n_pos=200, n_neg=2000, epochs=2)
    p, run_ = dx.load_inputs(params(tmp_path))
    dx.diagnose(run_, p, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1: ROC, ties and intervals on the logits" in err and "4/4" in err
    dx.diagnose(run_, p)  # 4,400 rows: nothing shown
    assert capsys.readouterr().err == ""


def test_the_early_stopping_lab_says_its_own_patience():
    """The advice's patience is the run's; the lab's sentence names the lab's, so the two are not confused."""
    from helpers.roc_collapse import lab

    es = lab.early_stopping(seed=0)
    said = dx.lab_sentences(None, early=es)
    text = next(iter(said.values()))
    assert f"(patience {es['patience']})" in text and f"kept epoch {es['kept_epoch']}" in text
    assert es["kept_epoch"] <= es["stop_epoch"] <= es["kept_epoch"] + es["patience"]
