"""helpers.history.load_history: every per-epoch log format a training run leaves, and bad files."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers.history import load_history, parse_metric_key
from helpers.io import InputError

EPOCHS = 4
TRAIN = [0.5, 0.3, 0.2, 0.1]
VAL = [0.6, 0.4, 0.35, 0.5]
TPR = [0.7, 0.8, 0.0, 0.0]
FPR = [0.001, 0.0005, 0.002, 0.002]


def check(h: pd.DataFrame, first_epoch: int = 0):
    assert list(h["epoch"]) == list(range(first_epoch, first_epoch + EPOCHS))
    np.testing.assert_allclose(h["train_loss"], TRAIN, rtol=1e-6)
    np.testing.assert_allclose(h["val_loss"], VAL, rtol=1e-6)
    np.testing.assert_allclose(h["tpr@fpr1e-4"], TPR, rtol=1e-6)
    np.testing.assert_allclose(h["fpr@tpr0.50"], FPR, rtol=1e-6)
    assert list(h.columns[:5]) == ["epoch", "train_loss", "val_loss", "fpr@tpr0.50", "tpr@fpr1e-4"]


@pytest.mark.parametrize("key, expected", [
    ("tpr@fpr1e-4", ("tpr", "fpr", 1e-4)), ("fpr@tpr0.50", ("fpr", "tpr", 0.5)), ("val_tpr@fpr0.001", ("tpr", "fpr", 1e-3)),
    ("eval/fpr@tpr.85", ("fpr", "tpr", 0.85)), ("tpr@fpr1E-3", ("tpr", "fpr", 1e-3)),
    ("tpr@tpr0.5", None), ("tpr@fpr2", None), ("tpr@fpr0", None), ("auc", None), ("tpr@fpr1e-4x", None),
])
def test_parse_metric_key(key, expected):
    assert parse_metric_key(key) == expected


def test_json_list_and_wrapped(tmp_path):
    rows = [{"epoch": e, "train_loss": TRAIN[e], "val_loss": VAL[e], "tpr@fpr1e-4": TPR[e], "fpr@tpr0.50": FPR[e],
             "lr": 1e-3} for e in range(EPOCHS)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"history": rows, "config": {"lr": 1e-3}}))
    for f in ("a.json", "b.json"):
        h = load_history("history", tmp_path / f)
        check(h)
        assert "lr" in h.columns


def test_json_list_without_epoch_counts_from_zero(tmp_path):
    rows = [{"train_loss": TRAIN[e], "val_loss": VAL[e], "tpr@fpr1e-4": TPR[e], "fpr@tpr0.50": FPR[e]}
            for e in range(EPOCHS)]
    (tmp_path / "h.json").write_text(json.dumps(rows))
    check(load_history("history", tmp_path / "h.json"))


def test_keras_history_dict_json(tmp_path):
    # json.dump(model.fit(...).history): {"loss": [...], "val_loss": [...], "val_<metric>": [...]}
    (tmp_path / "k.json").write_text(json.dumps({"loss": TRAIN, "val_loss": VAL, "val_tpr@fpr1e-4": TPR,
                                                 "val_fpr@tpr0.50": FPR}))
    check(load_history("history", tmp_path / "k.json"))


def test_huggingface_trainer_state(tmp_path):
    # Trainer.state.save_to_json: train "loss" logged every logging_steps at fractional epochs,
    # eval entries with "eval_" keys at each whole epoch (1-based), and a final summary entry.
    log = []
    for e in range(1, EPOCHS + 1):
        for k, frac in enumerate((0.5, 1.0)):
            log.append({"epoch": e - 1 + frac, "grad_norm": 1.0, "learning_rate": 1e-4, "loss": TRAIN[e - 1] + (0.1 if k == 0 else -0.1),
                        "step": 10 * (2 * e - 1 + k)})
        log.append({"epoch": float(e), "eval_loss": VAL[e - 1], "eval_tpr@fpr1e-4": TPR[e - 1],
                    "eval_fpr@tpr0.50": FPR[e - 1], "eval_runtime": 1.2, "eval_samples_per_second": 100.0,
                    "eval_steps_per_second": 5.0, "step": 20 * e})
    log.append({"epoch": float(EPOCHS), "step": 20 * EPOCHS, "total_flos": 1e12, "train_loss": 9.9,
                "train_runtime": 100.0, "train_samples_per_second": 10.0, "train_steps_per_second": 1.0})
    state = {"best_metric": None, "best_model_checkpoint": None, "epoch": float(EPOCHS), "eval_steps": 500,
             "global_step": 20 * EPOCHS, "is_hyper_param_search": False, "is_local_process_zero": True,
             "is_world_process_zero": True, "log_history": log, "logging_steps": 10, "max_steps": 20 * EPOCHS,
             "num_train_epochs": EPOCHS, "save_steps": 500, "total_flos": 1e12, "train_batch_size": 8}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state, indent=2))
    h = load_history("history", tmp_path / "trainer_state.json")
    check(h, first_epoch=1)  # the mean of the epoch's two logged train losses
    assert "eval_runtime" in h.columns


def test_lightning_csvlogger_metrics_csv(tmp_path):
    # lightning.pytorch.loggers.CSVLogger: one row per log call, NaN where a key was not logged;
    # self.log("train_loss", on_step=True, on_epoch=True) gives train_loss_step and train_loss_epoch.
    rows = []
    step = 0
    for e in range(EPOCHS):
        for _ in range(3):
            rows.append({"epoch": e, "step": step, "train_loss_step": 9.0})
            step += 1
        rows.append({"epoch": e, "step": step - 1, "val_loss": VAL[e], "val_tpr@fpr1e-4": TPR[e],
                     "val_fpr@tpr0.50": FPR[e]})
        rows.append({"epoch": e, "step": step - 1, "train_loss_epoch": TRAIN[e]})
    cols = ["epoch", "step", "train_loss_epoch", "train_loss_step", "val_fpr@tpr0.50", "val_loss", "val_tpr@fpr1e-4"]
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "metrics.csv", index=False)
    h = load_history("history", tmp_path / "metrics.csv")
    check(h)
    assert "train_loss_step" not in h.columns


def test_keras_csvlogger(tmp_path):
    # keras.callbacks.CSVLogger: epoch (0-based), then the logs' keys sorted: loss, metrics, val_*
    text = "epoch,fpr@tpr0.50,loss,tpr@fpr1e-4,val_fpr@tpr0.50,val_loss,val_tpr@fpr1e-4\n" + "".join(
        f"{e},0.9,{TRAIN[e]},0.9,{FPR[e]},{VAL[e]},{TPR[e]}\n" for e in range(EPOCHS))
    (tmp_path / "training.log.csv").write_text(text)
    h = load_history("history", tmp_path / "training.log.csv")
    # the validation metric wins over the training one of the same key (Keras logs both)
    check(h)


def test_tensorboard_event_file_and_directory(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path / "run")) as w:
        for e in range(EPOCHS):
            w.add_scalar("train_loss", TRAIN[e], e)
            w.add_scalar("val_loss", VAL[e], e)
            w.add_scalar("val/tpr@fpr1e-4", TPR[e], e)
            w.add_scalar("val/fpr@tpr0.50", FPR[e], e)
    check(load_history("history", tmp_path / "run"))
    event = next((tmp_path / "run").glob("events.out.tfevents*"))
    check(load_history("history", event))


def test_tensorboard_with_an_epoch_scalar_uses_it(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path / "run")) as w:
        step = 0
        for e in range(EPOCHS):
            for _ in range(5):
                w.add_scalar("epoch", e, step)
                w.add_scalar("train_loss", TRAIN[e], step)
                step += 1
            w.add_scalar("val_loss", VAL[e], step - 1)
            w.add_scalar("tpr@fpr1e-4", TPR[e], step - 1)
            w.add_scalar("fpr@tpr0.50", FPR[e], step - 1)
    check(load_history("history", tmp_path / "run"))


def test_missing_metric_epochs_stay_nan(tmp_path):
    rows = [{"epoch": e, "train_loss": TRAIN[e], **({"tpr@fpr1e-4": TPR[e]} if e % 2 else {})} for e in range(EPOCHS)]
    (tmp_path / "h.json").write_text(json.dumps(rows))
    h = load_history("history", tmp_path / "h.json")
    assert h["tpr@fpr1e-4"].isna().tolist() == [True, False, True, False]
    assert h["val_loss"].isna().all()


@pytest.mark.parametrize("name, text, problem", [
    ("h.json", "{oops", "is not valid JSON"),
    ("h.json", '{"a": 1}', "expected a list of per-epoch objects"),
    ("h.json", "[]", "history has no entries"),
    ("h.json", '[{"epoch": 0.5, "train_loss": 1}]', "whole epochs"),
    ("h.json", '[{"epoch": 0, "tpr@fpr1e-4": 79.8}]', "must be a rate in [0, 1]"),
    ("h.json", '{"loss": [1, 2], "val_loss": [1]}', "different lengths"),
    ("h.json", '{"log_history": [{"step": 3}]}', "no train or eval entries"),
    ("h.txt", "x", "unsupported history file"),
    ("h.csv", "epoch,loss\n", "history has no entries"),
])
def test_bad_history_files_fail_in_one_line(tmp_path, name, text, problem):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as e:
        load_history("history", tmp_path / name)
    msg = str(e.value)
    assert msg.startswith("history: ") and problem in msg and name in msg and "\n" not in msg


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(InputError, match="history: .*nope.json: file not found"):
        load_history("history", tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="TensorBoard event files"):
        load_history("history", tmp_path / "empty")
    bad = tmp_path / "events.out.tfevents.123.host"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="history: "):
        load_history("history", bad)
