"""The docs' "Export this from your training script" snippets run, and their notebook reads them.

Each docs page marks its snippet with ``<!-- snippet: NN -->`` right before the python block.
A test here defines the names the page says the snippet assumes (a tiny model, seeded data,
``out_dir``), executes the snippet's exact text, then loads the files it wrote with the
notebook's own ``load_inputs`` and runs its diagnosis. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from helpers.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
NOTEBOOKS = ["01_r2_gap", "02_encoder_variance", "03_checkpoint_divergence", "04_roc_collapse",
             "05_augmentation_leakage"]
MARKED = re.compile(r"<!-- snippet: (\d+) -->[ \t]*\n```python\n(.*?)\n```", re.S)
IN_PROCESS_LIMIT_S = 180  # one in-process snippet and its diagnosis
DDP_LIMIT_S = 120  # both DDP ranks together


def snippet(name: str) -> str:
    """The text of the python block marked ``<!-- snippet: NN -->`` in docs/<name>.md."""
    number = name[:2]
    found = [m[2] for m in MARKED.finditer((DOCS / f"{name}.md").read_text()) if m[1] == number]
    if len(found) != 1:
        pytest.fail(f"docs/{name}.md: expected one ```python block right after "
                    f"'<!-- snippet: {number} -->', found {len(found)}")
    return found[0] + "\n"


def run_snippet(name: str, namespace: dict) -> dict:
    """Execute the snippet in ``namespace``: the names its surrounding script would define."""
    exec(compile(snippet(name), f"docs/{name}.md (snippet)", "exec"), namespace)
    return namespace


@pytest.fixture
def deadline():
    """Fail an in-process snippet that runs past IN_PROCESS_LIMIT_S instead of hanging."""
    def expire(signum, frame):
        raise TimeoutError(f"snippet still running after {IN_PROCESS_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(IN_PROCESS_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def out_dir(tmp_path, monkeypatch, deadline):
    """A fresh directory, also the working directory (Lightning writes its logs there)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    return tmp_path


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_page_has_its_snippet(name):
    assert "## Export this from your training script" in (DOCS / f"{name}.md").read_text()
    text = snippet(name)
    assert 10 <= len(text.strip().splitlines()) <= 40, f"docs/{name}.md: keep the snippet short"
    assert not re.search(r"from_pretrained|load_dataset|https?://", text), "nothing downloads"


# --------------------------------------------------------------------------- 01: PyTorch DDP
DDP_RANK = """
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
torch.manual_seed(0)  # the same data and weights on every rank
n = int(os.environ["N_SAMPLES"])
x = torch.randn(n, 3)
session = torch.arange(n) % 3
y = x @ torch.tensor([1.0, -2.0, 0.5]) + session.float() + 0.3 * torch.randn(n)
dataset = TensorDataset(x, y, torch.arange(n), session)
sampler = DistributedSampler(dataset, shuffle=True, seed=1)
val_loader = DataLoader(dataset, batch_size=8, sampler=sampler)
model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
out_dir = os.environ["OUT_DIR"]
exec(compile(open(sys.argv[1]).read(), "docs/01_r2_gap.md (snippet)", "exec"))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebook  # starts a torch.distributed process group of two processes
def test_01_ddp_eval_loop(tmp_path):
    from helpers.r2_gap import diagnosis as r2_gap

    n, world = 101, 2  # 101 does not divide among 2 ranks: DistributedSampler pads one repeat
    (tmp_path / "snippet.py").write_text(snippet("01_r2_gap"))
    (tmp_path / "rank.py").write_text(DDP_RANK)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(world), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "N_SAMPLES": str(n), "OUT_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "rank.py", "snippet.py"], cwd=tmp_path,
                              env={**env, "RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    try:
        outputs = [p.communicate(timeout=DDP_LIMIT_S)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outputs = [p.communicate()[0] for p in procs]
        pytest.fail(f"the DDP snippet did not finish in {DDP_LIMIT_S} s:\n" + "\n".join(outputs))
    for r, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{out}"

    params = dict(predictions=str(tmp_path / "val_predictions.parquet"),
                  reported=str(tmp_path / "logged.json"), multioutput="flat", tolerance=1e-4,
                  n_bootstrap=200, lab_world_size=4, output_dir="", run_demos=False, seed=0)
    p, run = r2_gap.load_inputs(params)
    table = run.table
    # every sample, plus exactly the sampler's padding; each rank evaluated its half
    assert sorted(table["sample_id"].unique()) == list(range(n))
    assert len(table) == world * math.ceil(n / world)
    assert table.groupby("rank").size().to_dict() == {0: 51, 1: 51}
    assert set(table["session"]) == {0, 1, 2}
    d = r2_gap.diagnose(run, p)
    assert d.padding["n_duplicate_rows"] == 1 and d.padding["n_unique_rows"] == n
    found = {f.id: f for f in r2_gap.findings(d)}
    assert found["sampler_padding_duplicates"].status == "detected"
    # torchmetrics' synced R² counts the padded row, and the notebook reproduces it that way
    assert found["reported_unexplained"].status == "not_detected"
    rec = d.reconciliation
    hit = rec[(rec["reported"] == "r2") & rec["session"].isna()]
    assert len(hit) == 1 and bool(hit["explained"].iloc[0])
    assert "all incl. duplicates" in hit["scope"].iloc[0]


# --------------------------------------------------------------------------- 02: Lightning
class VariationalEncoder(nn.Module):
    def __init__(self, n_in=6, n_latent=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 2 * n_latent))

    def forward(self, x):
        mu, logvar = self.body(x).chunk(2, dim=-1)
        return mu, logvar


@pytest.mark.xdist_group("torchmetrics")  # lightning imports torchmetrics; see conftest.TORCHMETRICS
def test_02_lightning_predict(out_dir):
    from helpers.encoder_variance import diagnosis as ev

    puzzles, per_puzzle = 5, 20
    puzzle_id = torch.arange(puzzles).repeat_interleave(per_puzzle)
    x = torch.randn(puzzles, 6)[puzzle_id] + 0.3 * torch.randn(len(puzzle_id), 6)
    encoder = VariationalEncoder()
    loader = DataLoader(TensorDataset(x, puzzle_id), batch_size=16)
    run_snippet("02_encoder_variance", {"encoder": encoder, "loader": loader,
                                        "out_dir": str(out_dir)})

    p, loaded = ev.load_inputs({"embeddings": str(out_dir / "embeddings.npz"), "compare": [],
                                "output_dir": "", "run_demos": False, "seed": 0})
    assert loaded.others == {}
    run = loaded.main
    n = puzzles * per_puzzle
    assert run.z.shape == (n, 4) and run.logvar.shape == (n, 4)
    assert run.z_samples.shape[0] == n and run.z_samples.shape[2:] == (4,)
    assert run.n_passes >= 2
    np.testing.assert_array_equal(run.group, puzzle_id.numpy())  # rows in the loader's order
    with torch.no_grad():
        mu, _ = encoder(x)
    np.testing.assert_allclose(run.z, mu.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(run.z_samples[:, 0], run.z_samples[:, 1])  # the passes differ
    found = {f.id: f for f in ev.findings(ev.diagnose(loaded, p))}
    assert found["sampling_noise_dominates"].status != "not_applicable"
    assert found["stochasticity_collapsed"].status != "not_applicable"


# --------------------------------------------------------------------------- 03: Lightning
NET = """
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
"""


def lit_regressor(net):
    import lightning as L

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = net

        def training_step(self, batch):
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def validation_step(self, batch):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.model(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    return Regressor()


@pytest.mark.xdist_group("torchmetrics")  # lightning imports torchmetrics; see conftest.TORCHMETRICS
def test_03_lightning_checkpoints(out_dir):
    from helpers.checkpoint_divergence import diagnosis as cd
    from helpers.params import load_callable

    (out_dir / "mynet.py").write_text(NET)
    factory = f"{out_dir / 'mynet.py'}:build"
    w = torch.randn(4, 2)
    x, x_val = torch.randn(160, 4), torch.randn(60, 4)
    y, y_val = torch.tanh(x @ w), torch.tanh(x_val @ w)
    lit_model, epochs = lit_regressor(load_callable("model_factory", factory)()), 5
    run_snippet("03_checkpoint_divergence", {
        "lit_model": lit_model, "max_epochs": epochs, "out_dir": str(out_dir),
        "experiment_x": torch.randn(4),
        "train_loader": DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True),
        "val_loader": DataLoader(TensorDataset(x_val, y_val), batch_size=32)})

    params = dict(checkpoints="", forward_model="", model_factory=factory,
                  checkpoint_files=str(out_dir / "checkpoints" / "*.ckpt"),
                  validation=str(out_dir / "validation.npz"), last_k=3, k_neighbours=5, callable_timeout=60.0,
                  output_dir="", run_demos=False, seed=0)
    p, run = cd.load_inputs(params)
    assert run.forward is None
    assert run.n_checkpoints == epochs and run.epoch.tolist() == list(range(epochs))
    assert run.val_loss_source == "the checkpoints' 'val_loss' entries"
    assert run.n == 60 and run.train_target.shape == (160, 2)
    assert run.experiment_pred.shape == (epochs, 2)
    with torch.no_grad():  # the last checkpoint holds the final weights
        final = lit_model.model.eval()(x_val).numpy()
    np.testing.assert_allclose(run.pred[-1], final, rtol=1e-5, atol=1e-6)
    d = cd.diagnose(run, p)
    assert d.val_best_epoch == int(run.epoch[np.argmin(run.val_loss)])
    assert {f.id for f in cd.findings(d)} == set(cd.FINDING_IDS)
    assert len(d.remedies)


# --------------------------------------------------------------------------- 04: HF Trainer
class TinyClassifier(nn.Module):
    """A dict with ``loss`` and ``logits``, as the Trainer expects; no pretrained weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        logits = self.net(x).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return out


class Examples(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.rand(n, generator=g) < 0.3).long()
        self.x = torch.randn(n, 8, generator=g) + 0.8 * self.labels[:, None]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


def tpr_at_fpr_10(prediction):
    """The metric the training script logs: largest TPR with FPR <= 0.1."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(prediction.label_ids, prediction.predictions)
    return {"tpr@fpr0.1": float(tpr[fpr <= 0.1].max())}


@pytest.mark.xdist_group("torchmetrics")  # transformers, which torchmetrics imports; see conftest.TORCHMETRICS
def test_04_huggingface_trainer(out_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import Trainer, TrainingArguments

    from helpers.roc_collapse import diagnosis as rc

    epochs, val_ds = 3, Examples(300, seed=1)
    args = TrainingArguments(
        output_dir=str(out_dir / "hf_out"), num_train_epochs=epochs, learning_rate=1e-2,
        per_device_train_batch_size=64, per_device_eval_batch_size=128, eval_strategy="epoch",
        save_strategy="epoch", logging_strategy="epoch", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0)
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=Examples(600, seed=0),
                      eval_dataset=val_ds, compute_metrics=tpr_at_fpr_10)
    run_snippet("04_roc_collapse", {"trainer": trainer, "val_ds": val_ds, "out_dir": str(out_dir)})

    params = dict(history=str(out_dir / "hf_out" / "trainer_state.json"),
                  scores=str(out_dir / "scores.parquet"), fpr_targets=[0.1], tpr_targets=[0.5],
                  seen_ids="", roc_function="", n_bootstrap=200, callable_timeout=60.0, output_dir="", run_demos=False,
                  seed=0)
    p, inputs = rc.load_inputs(params)
    trained = list(range(1, epochs + 1))  # the Trainer's epochs count from 1
    assert inputs.history["epoch"].tolist() == trained
    assert inputs.history[["train_loss", "val_loss"]].notna().all().all()
    assert sorted(inputs.scores["epoch"].unique()) == trained
    assert inputs.scores.groupby("epoch").size().eq(len(val_ds)).all()
    assert inputs.has_scores and inputs.has_logits
    d = rc.diagnose(inputs, p)
    assert d.epochs == trained and d.n_pos == int(val_ds.labels.sum())
    found = {f.id: f for f in rc.findings(d)}
    # the eval_tpr@fpr0.1 logged at each epoch is recomputed from that epoch's exported scores
    assert found["logged_metric_mismatch"].status == "not_detected"
    assert found["logged_metric_mismatch"].evidence["checked"] == epochs


# --------------------------------------------------------------------------- 05: augmentation
def test_05_augmented_dataset(out_dir):
    from helpers.augmentation_leakage import diagnosis as al

    originals, copies, n_features = 120, 3, 6
    x = torch.randn(originals, n_features)
    y = x @ torch.randn(n_features) + 0.1 * torch.randn(originals)
    # copies made once, up front, each row keeping the index of its original
    parent_id = torch.arange(originals).repeat_interleave(1 + copies)
    is_augmented = (torch.arange(len(parent_id)) % (1 + copies) > 0).long()
    noise = 0.05 * is_augmented[:, None] * torch.randn(len(parent_id), n_features)
    dataset = TensorDataset(x[parent_id] + noise, y[parent_id], parent_id, is_augmented)
    # the split after augmentation that notebook 05 is there to catch
    train_set, val_set = random_split(dataset, [0.8, 0.2],
                                      generator=torch.Generator().manual_seed(0))
    run_snippet("05_augmentation_leakage", {"train_set": train_set, "val_set": val_set,
                                            "out_dir": str(out_dir)})

    params = dict(samples=str(out_dir / "samples.parquet"), feature_columns=[], declared_copies="",
                  group_metrics="", baseline_run="baseline", train_loss=math.nan,
                  val_loss=math.nan, output_dir="", run_demos=False, seed=0)
    p, run = al.load_inputs(params)
    s = run.samples
    features = [f"x{j}" for j in range(n_features)]
    assert run.features == features
    assert len(s) == originals * (1 + copies)
    assert int(s["is_augmented"].sum()) == originals * copies
    assert s["split"].value_counts().to_dict() == {"train": len(train_set), "val": len(val_set)}
    val_x = dataset.tensors[0][val_set.indices].numpy()
    np.testing.assert_allclose(s.loc[s["split"] == "val", features].to_numpy(), val_x, rtol=1e-6)
    train_parents = set(parent_id[train_set.indices].tolist())
    leaked = sum(int(parent_id[i]) in train_parents for i in val_set.indices)
    d = al.diagnose(run, p)
    found = {f.id: f for f in al.findings(d)}
    assert found["parent_leakage"].status == "detected"
    assert found["parent_leakage"].evidence["n_leaked_rows"] == leaked > 0
