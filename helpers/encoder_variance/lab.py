"""The mechanism lab of notebook 02: small encoders trained live (see :mod:`helpers.encoder_variance.simulate`).

- :func:`kl_sweep` trains one variational encoder per KL weight (and one deterministic encoder),
  diagnoses each and measures its task error on held-out puzzles: the KL weight moves an encoder
  between "collapsed to deterministic" and "stochastic but not diverse", at a price in task error.
- :func:`logvar_init_check` retrains the smallest weight with the logvar head started elsewhere
  than 0 (the source blamed that initialisation); :func:`source_causes` states what the sweep and
  that check say about the source's causes.
- :func:`support` turns the sweep into one sentence per detected finding for "What to change".
- :func:`repeat_pass_variance` shows that ``model.eval()`` turns dropout off but samples nothing:
  repeated eval-mode passes are identical even for a stochastic encoder.

Seeded and single-threaded; with ``seed=0`` the sweep retrains exactly the sample's encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from helpers.encoder_variance import representation as rep
from helpers.encoder_variance import simulate as sim
from helpers.encoder_variance.diagnosis import EncoderRun, Measurements, compare_runs, measure

KL_WEIGHTS = (1e-4, 1e-3, 1e-2, 1.0)
LOGVAR_INITS = (-4.0, 2.0)  # besides the source's 0: posterior variance e^-4 = 0.018 and e^2 = 7.4 at the start
PASS_MODES = ("train", "eval", "eval+sample")
HELD_OUT = 4096  # held-out puzzles the task error is measured on


@dataclass
class KLSweep:
    """One row per KL weight (``table``: held-out task MSE with its standard error, the mean
    posterior variance, and :func:`compare_runs` columns), the trained encoders by weight, a
    deterministic encoder trained the same way with its task MSE, and the evaluation
    demonstrations, puzzle ids and configuration they were run on."""

    table: pd.DataFrame
    encoders: dict[float, sim.TaskEncoder]
    deterministic: sim.TaskEncoder
    deterministic_mse: float
    demos: torch.Tensor
    puzzle: np.ndarray
    cfg: sim.EncoderConfig


def _trained(kl_weight: float, cfg: sim.EncoderConfig, demos, puzzle) -> tuple[sim.TaskEncoder, Measurements, dict]:
    """Train one variational encoder; its measurements and its row of task numbers."""
    enc, dec, _ = sim.train(kl_weight, True, cfg)
    embedded = sim.embed(enc, demos, cfg.n_passes, seed=cfg.seed + 3)
    m = measure(EncoderRun.from_arrays({**embedded, "group": puzzle}, f"KL {kl(kl_weight)}"))
    err = sim.task_error(enc, dec, cfg, HELD_OUT)
    row = {"task_mse": err.mean(), "task_mse_se": err.std(ddof=1) / np.sqrt(len(err)),
           "task_mse_at_mean": sim.task_error(enc, dec, cfg, HELD_OUT, sample=False).mean(),
           "posterior_var": float(np.exp(embedded["logvar"].astype(float)).mean())}
    return enc, m, row


def kl_sweep(seed: int = 0, weights=KL_WEIGHTS) -> KLSweep:
    """Train a variational encoder per KL weight on puzzles of ``seed``, diagnose each and measure
    its task error (``task_mse``: decoding a sampled latent, as in training; ``task_mse_at_mean``:
    decoding the posterior mean) on :data:`HELD_OUT` fresh puzzles."""
    cfg = sim.with_seed(seed)
    demos, puzzle = sim.evaluation_set(cfg)
    encoders, measured, rows = {}, {}, {}
    for w in weights:
        encoders[w], measured[w], rows[w] = _trained(w, cfg, demos, puzzle)
    table = pd.concat([pd.DataFrame(rows).T, compare_runs(measured)], axis=1).rename_axis("kl_weight")
    det, dec, _ = sim.train(0.0, False, cfg)
    return KLSweep(table, encoders, det, float(sim.task_error(det, dec, cfg, HELD_OUT).mean()), demos, puzzle, cfg)


def logvar_init_check(sweep: KLSweep, inits=LOGVAR_INITS, weight: float | None = None) -> pd.DataFrame:
    """Retrain the sweep's smallest KL weight (or ``weight``) with the logvar head started at each
    of ``inits`` (the sweep's own encoder is the row for 0): the posterior variance each ends with,
    its sampling share, decision and task MSE."""
    w = min(sweep.table.index) if weight is None else weight
    rows = {0.0: sweep.table.loc[w]}
    for init in inits:
        _, m, row = _trained(w, replace(sweep.cfg, logvar_init=float(init)), sweep.demos, sweep.puzzle)
        rows[float(init)] = pd.Series({**row, **compare_runs({"x": m}).iloc[0].to_dict()})
    out = pd.DataFrame(rows).T.sort_index().rename_axis("logvar_init")
    out.insert(0, "start_posterior_var", np.exp(out.index.to_numpy(dtype=float)))
    out.insert(0, "kl_weight", w)
    return out[["kl_weight", "start_posterior_var", "posterior_var", "sampling_share", "between_share",
                "decision", "task_mse"]]


def kl(w: float) -> str:
    """A KL weight as written in code: 1e-4, 0.5, 1."""
    if w == 0 or abs(w) >= 0.1:
        return f"{w:g}"
    mantissa, exponent = f"{w:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _weights(table: pd.DataFrame, col: str, fmt: str) -> str:
    return ", ".join(f"{format(v, fmt)} at KL {kl(w)}" for w, v in table[col].items())


def source_causes(sweep: KLSweep, inits: pd.DataFrame | None = None) -> list[str]:
    """What the lab says about the source's causes of low diversity: a very low KL weight (the
    direction of the between-puzzle variance across the sweep) and logvar initialised at 0."""
    t = sweep.table.sort_index()
    lo, hi = t.index[0], t.index[-1]
    between = t["between"].astype(float)
    falls = bool((np.diff(between.to_numpy()) < 0).all())
    lines = [f"between-puzzle variance by KL weight: {_weights(t, 'between', '.3g')}."]
    if falls:
        lines.append(f"It falls at every step up in KL weight: a low KL weight does not lower diversity here, a high one "
                     f"does (between share {t.loc[lo, 'between_share']:.1%} at KL {kl(lo)}, "
                     f"{t.loc[hi, 'between_share']:.1%} at KL {kl(hi)}). The source analysis blamed its very low "
                     "weight (1e-4) for low diversity: the lab measures the opposite.")
    else:
        lines.append("It does not fall at every step up in KL weight: the lab cannot say which way the weight moves diversity.")
    if inits is not None:
        w = inits["kl_weight"].iloc[0]
        parts = ", ".join(f"{i:g}: {r.posterior_var:.3g} (sampling {r.sampling_share:.1%}, {r.decision})"
                          for i, r in inits.iterrows())
        lines.append(f"KL {kl(w)}, logvar initialised at each value (posterior variance at the end): {parts}.")
        same = inits["decision"].nunique() == 1
        lines.append(f"The initialisation {'does not change' if same else 'changes'} the outcome: "
                     + (f"every start ends '{inits['decision'].iloc[0]}', so logvar starting at 0 is not what "
                        "decides it; the KL weight is." if same else "the source's logvar-at-0 cause is plausible here."))
    return lines


def support(sweep: KLSweep, found, inits: pd.DataFrame | None = None) -> dict[str, str]:
    """What the lab measured for each detected finding's change of KL weight (its evidence's
    ``kl_weight_change``: "raise", "lower" or "" for none): {finding_id: sentence}."""
    t = sweep.table.sort_index()
    lo, hi = t.index[0], t.index[-1]
    out = {}
    for f in found:
        if not f.detected:
            continue
        change = f.evidence.get("kl_weight_change", "")
        if change == "raise":
            out[f.id] = _raise_support(sweep, t, inits)
        elif change == "lower":
            out[f.id] = _lower_support(t, {"dimensional_collapse": ("effective_rank", "effective rank", ".1f"),
                                           "inactive_units": ("active_units", "active units", ".0f")}.get(f.id))
        elif f.id == "representation_collapse":
            icc = t["icc"].astype(float)
            if icc.max() - icc.min() < 0.1:
                out[f.id] = (f"across the KL weights {kl(lo)} to {kl(hi)} the ICC of the posterior means stayed between "
                             f"{icc.min():.2f} and {icc.max():.2f}: the KL weight moves sampling noise, not how far apart "
                             "the means of puzzles lie.")
    return out


def _lower_support(t: pd.DataFrame, extra: tuple[str, str, str] | None) -> str:
    """The sweep from the largest KL weight down: between share, task MSE (and ``extra``'s column),
    and the largest weight whose encoder is healthy."""
    down = t.sort_index(ascending=False)
    s = f"from KL {kl(down.index[0])} down to {kl(down.index[-1])}, between share {_listing(down, 'between_share', '.1%')}"
    if extra:
        col, name, fmt = extra
        s += f", {name} {_listing(down, col, fmt)}"
    s += f"; task MSE {_listing(down, 'task_mse', '.4f')}. "
    healthy = [w for w in down.index if down.loc[w, "decision"] == "healthy"]
    if not healthy:
        return s + "No weight of the sweep gave a healthy encoder."
    w = healthy[0]
    s += (f"KL {kl(w)} is the largest weight whose encoder is healthy (between share {t.loc[w, 'between_share']:.0%}, "
          f"sampling {t.loc[w, 'sampling_share']:.1%}, task MSE {t.loc[w, 'task_mse']:.4f})")
    collapsed = [kl(v) for v in down.index if v < w and down.loc[v, "decision"] == "collapsed to deterministic"]
    return s + (f"; at KL {', '.join(collapsed)} it collapses to deterministic." if collapsed else ".")


def _listing(table: pd.DataFrame, col: str, fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in table[col])


def _raise_support(sweep: KLSweep, t: pd.DataFrame, inits: pd.DataFrame | None) -> str:
    mse = t["task_mse"].astype(float)
    listing = ", ".join(f"{mse[w]:.4f} at KL {kl(w)} (sampling {t.loc[w, 'sampling_share']:.1%})" for w in t.index)
    s = f"held-out task MSE {listing}; {sweep.deterministic_mse:.4f} for a deterministic encoder. "
    best = mse.idxmin()
    healthy = [w for w in t.index if t.loc[w, "decision"] == "healthy"]
    if healthy:
        w = healthy[0]
        cost, noise = mse[w] - mse[best], 2 * float(np.hypot(t.loc[w, "task_mse_se"], t.loc[best, "task_mse_se"]))
        at_mean = t["task_mse_at_mean"].astype(float)
        s += (f"KL {kl(w)} is the smallest weight that keeps the lab encoder stochastic and diverse (between share "
              f"{t.loc[w, 'between_share']:.0%}), at task MSE {mse[w]:.4f}: ")
        if w != best and cost > noise:
            s += (f"{cost / mse[best]:+.0%} against the best of the sweep ({mse[best]:.4f} at KL {kl(best)}; decoding "
                  f"the posterior mean instead, {at_mean[w]:.4f} against {at_mean[best]:.4f}). ")
            s += ("Raise the weight only if you need the samples: the collapsed encoder has the best task error of "
                  "the sweep." if t.loc[best, "decision"] == "collapsed to deterministic" else "That is the price of the samples.")
        else:
            s += f"no worse than the best of the sweep ({mse[best]:.4f}) beyond noise (+-{noise:.4f})."
    else:
        s += "No weight of the sweep kept the encoder both stochastic and diverse: drop the variational head."
    if inits is not None and inits["decision"].nunique() == 1:
        s += (f" Starting logvar at {', '.join(f'{i:g}' for i in inits.index)} ends the same way "
              f"({inits['decision'].iloc[0]}, sampling {inits['sampling_share'].min():.1%} to "
              f"{inits['sampling_share'].max():.1%}): the initialisation is not the cause.")
    return s


def repeat_pass_variance(sweep: KLSweep, seed: int = 0) -> pd.DataFrame:
    """Mean repeat-pass variance of the sweep's deterministic encoder and of its KL 1e-3 encoder
    (or its second weight), in each of :data:`PASS_MODES` (rows: encoder, columns: mode)."""
    cfg, demos = sweep.cfg, sweep.demos
    w = 1e-3 if 1e-3 in sweep.encoders else sorted(sweep.encoders)[min(1, len(sweep.encoders) - 1)]
    rows = []
    for name, enc in {"deterministic": sweep.deterministic, f"variational, KL {kl(w)}": sweep.encoders[w]}.items():
        for mode in PASS_MODES:
            p = sim.repeated_passes(enc, demos, cfg.n_passes, mode, seed=seed)
            rows.append({"encoder": name, "mode": mode, "repeat-pass variance": rep.sampling_variance(p).mean()})
    return pd.DataFrame(rows).pivot(index="encoder", columns="mode", values="repeat-pass variance")
