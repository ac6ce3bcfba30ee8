"""`vae-eval likelihood=bdmc`: the bidirectional Monte Carlo sandwich of a trained model (`likelihood/bdmc.py`).

Simulates `n_points` pairs (x, z) from the model, runs forward and reverse AIS at each budget of
`steps` (the number of intermediate distributions T), and places the other estimators (`others`, each
with its `vae-eval` defaults) on the same simulated points. Writes, under a name no earlier result has,
into the run's `eval/`: `bdmc-NNN.json` (per budget the mean lower and upper bound and the gap with
their standard errors over points; each other estimator's mean), `.npz` (the per-point bounds of
every budget, the other estimators' per-point values) and `.png`/`.pdf` (the gap against T, the
sandwich and where each estimator falls).
"""

from __future__ import annotations

import io
import math
import time

import torch
from tqdm import tqdm

from ..likelihood import ESTIMATORS, SETTINGS, concat
from ..likelihood.bdmc import Sandwich, sandwich, simulate
from .eval_files import npz, write_files


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double().cpu()
    return v.mean().item(), (v.std().item() / math.sqrt(v.numel()) if v.numel() > 1 else math.nan)


def batched_sandwich(model, x, z, n_steps: int, settings, batch_size: int, generator: torch.Generator) -> Sandwich:
    parts = [sandwich(model, xb, zb, n_steps, settings, generator) for xb, zb in zip(x.split(batch_size), z.split(batch_size))]
    return Sandwich(torch.cat([p.lower for p in parts]), torch.cat([p.upper for p in parts]), torch.cat([p.accept_rate for p in parts]), n_steps)


def draw(rows: list[dict], others: dict[str, dict]):
    """The gap against T (log-log) and the sandwich with each estimator's mean beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["n_steps"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    left.errorbar(steps, [r["lower"] for r in rows], [r["lower_se"] for r in rows], fmt="o-", color="tab:blue", label="lower bound (forward AIS)")
    left.errorbar(steps, [r["upper"] for r in rows], [r["upper_se"] for r in rows], fmt="s-", color="tab:red", label="upper bound (reverse AIS)")
    left.fill_between(steps, [r["lower"] for r in rows], [r["upper"] for r in rows], color="0.85", label="sandwich")
    for (name, o), style in zip(others.items(), ("--", "-.", ":", (0, (5, 1)))):
        left.axhline(o["log_px"], linestyle=style, color="k", linewidth=1, label=f"{name}: {o['log_px']:.2f}")
    left.set(xscale="log", xlabel="intermediate distributions T", ylabel="log p(x), nats per point (simulated data)")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    right.errorbar(steps, [r["gap"] for r in rows], [r["gap_se"] for r in rows], fmt="o-", color="k")
    right.axhline(1.0, color="0.6", linestyle="--", linewidth=1)
    right.set(xscale="log", yscale="log", xlabel="intermediate distributions T", ylabel="gap: upper - lower (nats)")
    fig.tight_layout()
    files = {}
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=110, bbox_inches="tight")
        files[f".{ext}"] = buffer.getvalue()
    plt.close(fig)
    return files


def run_bdmc(model, settings, batch_size: int, generator: torch.Generator, run_dir, summary: dict) -> dict:
    """The whole job on a rebuilt model; returns the summary with the files' paths."""
    x, z = simulate(model, settings.n_points, generator)
    rows, per_point = [], {}
    for n_steps in tqdm(sorted(settings.steps), desc="bdmc budgets", unit="T", leave=False):
        start = time.perf_counter()
        s = batched_sandwich(model, x, z, n_steps, settings, batch_size, generator)
        (lower, lower_se), (upper, upper_se), (gap, gap_se) = mean_se(s.lower), mean_se(s.upper), mean_se(s.gap)
        rows.append({"n_steps": n_steps, "lower": lower, "lower_se": lower_se, "upper": upper, "upper_se": upper_se, "gap": gap,
                     "gap_se": gap_se, "accept_rate": s.accept_rate.mean().item(), "seconds": round(time.perf_counter() - start, 1)})
        per_point.update({f"lower_T{n_steps}": s.lower, f"upper_T{n_steps}": s.upper})
        print(f"T={n_steps:>6}  lower {lower:10.3f} ± {lower_se:.3f}  upper {upper:10.3f} ± {upper_se:.3f}  "
              f"gap {gap:8.3f} ± {gap_se:.3f}  ({rows[-1]['seconds']:.0f} s)")
    others = {}
    for name in settings.others:
        start = time.perf_counter()
        estimate = concat([ESTIMATORS[name](model, xb, SETTINGS[name](), generator) for xb in x.split(batch_size)])
        value, se = mean_se(estimate.log_px)
        others[name] = {"log_px": value, "std_err": se, "seconds": round(time.perf_counter() - start, 1)}
        per_point[name] = estimate.log_px
        print(f"{name:<11} {value:10.3f} ± {se:.3f}  ({others[name]['seconds']:.0f} s)")
    summary.update(points=settings.n_points, budgets=rows, others=others,
                   simulated="binary draws x ~ Bernoulli(y)" if type(model.decoder).__name__ == "BernoulliMLP" else "draws x ~ p(x|z)")
    arrays = {k: v.double().cpu().numpy() for k, v in per_point.items()}
    return write_files(run_dir, "bdmc", {".npz": npz(arrays), **draw(rows, others)}, summary)
