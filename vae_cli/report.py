"""`vae-report DIR`: the paper's figures and a table from the runs of a sweep folder.

Every folder under DIR that holds a `config.yaml` is a run; its saved config says what it is
(data set, N_z, method, N_train, seed) and its `metrics.jsonl` what it measured. Figure 2 (lower
bound against training samples, log axis, one panel per N_z, AEVB and wake-sleep, train and test),
Figure 3 (marginal log-likelihood against samples, linear axis, one panel per N_train) and the
paper's own numbers (PAPER.md §7, `paper_values.py`) are drawn side by side; runs of several seeds
are drawn as their mean with a band from min to max. Broken or unfinished runs are reported and the
rest is drawn. Outputs go to DIR/report/: PNG and PDF figures and `report.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError
from .paper_values import CHECKPOINTS, FIG2_BOUND, FIG2_PANELS, FIG2_YLIM, FIG3_LOGLIK, FIG3_YLIM
from .runs import CONFIG_FILE, METRICS_FILE, atomic_write_bytes, atomic_write_text

COLOURS = {"aevb": "tab:red", "wake_sleep": "tab:green", "mcem": "tab:blue", "full_vb": "tab:purple"}
LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-Sleep", "mcem": "MCEM", "full_vb": "Full VB"}


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    problem: str = ""  # why the run cannot be drawn; empty when it can

    @property
    def finished(self) -> bool:
        return bool(self.metrics) and self.metrics[-1]["samples"] >= int(self.config["trainer"]["max_samples"])

    @property
    def key(self) -> tuple:
        """What the paper's figures tell runs apart by (the seed is not part of it)."""
        c = self.config
        return (c["dataset"]["name"], c["model"]["latent_dim"], c["method"]["name"], c["dataset"].get("n_train"))


def load_run(path: Path) -> Run:
    run = Run(path)
    try:
        run.config = yaml.safe_load((path / CONFIG_FILE).read_text())
        run.key, run.config["trainer"]["max_samples"]  # noqa: B018 - the fields every figure needs
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        run.problem = f"unreadable config.yaml ({type(e).__name__})"
        return run
    try:
        lines = (path / METRICS_FILE).read_text().splitlines()
        run.metrics = [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        run.problem = "no metrics.jsonl (the run never reached its first evaluation)"
    except (OSError, json.JSONDecodeError) as e:
        run.problem = f"corrupt metrics.jsonl ({type(e).__name__})"
    return run


def find_runs(root: Path) -> list[Run]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give vae-report a sweep folder such as multirun/<date>/<time>")
    runs = [load_run(p.parent) for p in sorted(root.rglob(CONFIG_FILE)) if "report" not in p.parts]
    if not runs:
        raise UserError(f"{root} holds no vae-train runs (no config.yaml below it); give vae-report a folder written by vae-train --multirun")
    return runs


def curve(runs: list[Run], field_name: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Samples, mean, min and max of `field_name` over the runs (seeds) at the samples all share."""
    series = [{r["samples"]: r[field_name] for r in run.metrics if r.get(field_name) is not None} for run in runs]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = [[s[n] for s in series] for n in common]
    return common, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def value_at(runs: list[Run], field_name: str, samples: int) -> float | None:
    """Mean over seeds of `field_name` at exactly `samples` (evaluations fall on 10^k), if reached."""
    x, mean, _, _ = curve(runs, field_name)
    return dict(zip(x, mean)).get(samples)


def _grouped(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    return groups


def _plot_curves(ax, runs: list[Run], method: str, field_prefix: str, x_scale: float = 1.0) -> None:
    for split, style in (("train", "-"), ("test", "--")):
        x, mean, low, high = curve(runs, f"{split}_{field_prefix}")
        if not x:
            continue
        xs = [n / x_scale for n in x]
        ax.plot(xs, mean, style, color=COLOURS.get(method, "black"), label=f"{LABELS.get(method, method)} ({split})")
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=COLOURS.get(method, "black"), alpha=0.15, linewidth=0)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=110, bbox_inches="tight")
        atomic_write_bytes(out / f"{name}.{ext}", buffer.getvalue())
        paths.append(out / f"{name}.{ext}")
    return paths


def draw_figure_2(groups: dict, dataset: str, out: Path, plt) -> list[Path]:
    """One panel per N_z: bound against training samples (log axis), as the paper's Fig. 2."""
    nzs = sorted({k[1] for k in groups if k[0] == dataset and k[2] in ("aevb", "wake_sleep")})
    if not nzs:
        return []
    fig, axes = plt.subplots(1, len(nzs), figsize=(3.2 * len(nzs), 3.0), squeeze=False)
    for ax, nz in zip(axes[0], nzs):
        for (ds, z, method, _), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if ds == dataset and z == nz and method in ("aevb", "wake_sleep"):
                _plot_curves(ax, runs, method, "bound")
        for method in ("aevb", "wake_sleep"):
            for split, marker in (("train", "o"), ("test", "x")):
                paper = FIG2_BOUND.get((dataset, nz, method, split), {})
                pts = [(n, v) for n, v in paper.items() if v is not None]
                if pts:
                    ax.plot(*zip(*pts), marker, color=COLOURS[method], markersize=5, mfc="none",
                            label=f"paper {LABELS[method]} ({split})")
        ax.set_xscale("log")
        low, high = FIG2_YLIM[dataset]
        ys = [v for line in ax.get_lines() for v in line.get_ydata()]
        ax.set_ylim(min([low, *ys]) - 5 if ys and min(ys) < low else low, max([high, *ys]) + 5 if ys and max(ys) > high else high)
        ax.set_title(f"{'MNIST' if dataset == 'mnist' else 'Frey Face'}, $N_z$ = {nz}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"$\mathcal{L}$ (nats per datapoint)", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    paths = _save(fig, out, f"fig2_{dataset}")
    plt.close(fig)
    return paths


def draw_figure_3(groups: dict, out: Path, plt) -> list[Path]:
    """Marginal log-likelihood against samples (millions, linear), one panel per N_train."""
    sizes = sorted({k[3] or 50000 for k, runs in groups.items() if any(r.get("train_loglik") is not None for run in runs for r in run.metrics)})
    if not sizes:
        return []
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.2), squeeze=False)
    for ax, n_train in zip(axes[0], sizes):
        for (_, _, method, n), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if (n or 50000) == n_train:
                _plot_curves(ax, runs, method, "loglik", x_scale=1e6)
        for (n, method, split), points in FIG3_LOGLIK.items():
            pts = [(s / 1e6, v) for s, v in points.items() if v is not None]
            if n == n_train and pts:
                ax.plot(*zip(*pts), "o" if split == "train" else "x", color=COLOURS[method], mfc="none", markersize=5)
        ax.set_ylim(*FIG3_YLIM.get(n_train, (-160, -100)))
        ax.set_title(f"$N_{{train}}$ = {n_train}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated (millions)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Marginal log-likelihood", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    paths = _save(fig, out, "fig3")
    plt.close(fig)
    return paths


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def report_table(groups: dict) -> list[str]:
    """One row per (data set, N_z, method, N_train): ours at 1e6, 1e7, 1e8 beside the paper's."""
    lines = ["| data | N_z | method | N_train | seeds | samples | " + " | ".join(
        f"{split} @{n:.0e}: ours / paper / diff" for n in CHECKPOINTS for split in ("train", "test")) + " |"]
    lines.append("|" + "---|" * (6 + 2 * len(CHECKPOINTS)))
    for (dataset, nz, method, n_train), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        cells = []
        for n in CHECKPOINTS:
            for split in ("train", "test"):
                ours = value_at(runs, f"{split}_bound", n)
                paper = FIG2_BOUND.get((dataset, nz, method, split), {}).get(n)
                diff = None if ours is None or paper is None else ours - paper
                cells.append(f"{_fmt(ours)} / {_fmt(paper)} / {_fmt(diff)}")
        reached = max(r.metrics[-1]["samples"] for r in runs)
        lines.append(f"| {dataset} | {nz} | {method} | {n_train or 'all'} | {len(runs)} | {reached:.2e} | " + " | ".join(cells) + " |")
    return lines


def report(root: Path) -> dict:
    """Draw every figure the runs under `root` allow and write report.md; return what was made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    runs = find_runs(root)
    good = [r for r in runs if not r.problem and r.metrics]
    if not good:
        raise UserError(f"no run under {root} has metrics to draw ({runs[0].path}: {runs[0].problem}); train first or point at another sweep")
    out = root / "report"
    groups = _grouped(good)
    figures = []
    for dataset in FIG2_PANELS:
        figures += draw_figure_2(groups, dataset, out, plt)
    figures += draw_figure_3(groups, out, plt)
    lines = [f"# vae-report: {root}", "", f"{len(good)} runs drawn, {len(runs) - len(good)} not drawn.", ""]
    lines += ["## Lower bound beside the paper's Figure 2 (nats per datapoint)", "", *report_table(groups), ""]
    unfinished = [r for r in good if not r.finished]
    problems = [r for r in runs if r.problem]
    if unfinished or problems:
        lines += ["## Missing", ""]
        lines += [f"- {r.path}: unfinished, {r.metrics[-1]['samples']:.3g} of {float(r.config['trainer']['max_samples']):.3g} samples" for r in unfinished]
        lines += [f"- {r.path}: {r.problem}" for r in problems]
        lines.append("")
    lines += ["## Figures", "", *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "figures": [str(p) for p in figures], "runs": len(runs),
            "drawn": len(good), "unfinished": [str(r.path) for r in unfinished], "broken": [str(r.path) for r in problems]}
