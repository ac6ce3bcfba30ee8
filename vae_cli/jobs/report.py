"""`vae-report DIR`: the paper's figures and a table from the runs of a sweep folder.

Every folder under DIR that holds a `config.yaml` is a run; its saved config says what it is
(data set, N_z, method, N_train, stepsize, seed) and its `metrics.jsonl` what it measured; a run of
a stack of K models (`trainer.n_models=K`) counts as K runs, the seeds s..s+K-1 of its rows. Drawn
beside the paper's own numbers (PAPER.md §7, `paper_values.py`):
- Figure 2: lower bound against training samples (log axis), one panel per N_z, AEVB and
  wake-sleep, train and test; runs of several seeds as their mean with a band from min to max;
- Figure 3: App. D marginal log-likelihood against samples (millions), one panel per N_train;
- Figure 4: decoder means over a grid of the unit square mapped through the inverse Gaussian CDF,
  for every run with N_z = 2 (from its checkpoint);
- Figure 5: 10x10 decoder means of z ~ N(0, I) per N_z of the MNIST runs (from their checkpoints).
`report.md` holds the table of our bounds at 1e6, 1e7, 1e8 samples beside the paper's, the stepsize
choice when the runs differ in `optimizer.lr` (the paper's selection, `hparams_search=stepsize`),
and what is missing. Broken or unfinished runs are reported and the rest is drawn. Outputs go to
DIR/report/ (derived files, rewritten by each report): PNG and PDF figures and `report.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..paper_values import (CHECKPOINTS, FIG2_BOUND, FIG2_HIDDEN, FIG2_PANELS, FIG2_YLIM, FIG3_CHECKPOINTS, FIG3_LOGLIK, FIG3_MODEL,
                           FIG3_YLIM)
from ..runs import CONFIG_FILE, METRICS_FILE, atomic_write_bytes, atomic_write_text

COLOURS = {"aevb": "tab:red", "wake_sleep": "tab:green", "mcem": "tab:blue", "full_vb": "tab:purple"}
LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-Sleep", "mcem": "MCEM", "full_vb": "Full VB"}


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    problem: str = ""  # why the run cannot be drawn; empty when it can
    member: int | None = None  # model k of a stack run (its metrics rows with "model": k); None: a one-model run

    @property
    def label(self) -> str:
        return str(self.path) if self.member is None else f"{self.path} (model {self.member})"

    @property
    def finished(self) -> bool:
        return bool(self.metrics) and self.metrics[-1]["samples"] >= int(self.config["trainer"]["max_samples"])

    @property
    def as_in_fig2(self) -> bool:
        """Trained as the paper's Fig. 2 models: all training data, the paper's hidden units."""
        c = self.config
        return c["dataset"].get("n_train") is None and list(c["model"]["hidden"]) == FIG2_HIDDEN[c["dataset"]["name"]]

    @property
    def as_in_fig3(self) -> bool:
        c = self.config
        return (c["dataset"]["name"], list(c["model"]["hidden"]), c["model"]["latent_dim"]) == tuple(FIG3_MODEL.values())

    @property
    def key(self) -> tuple:
        """What the paper's figures tell runs apart by (the seed is not part of it)."""
        c = self.config
        return (c["dataset"]["name"], c["model"]["latent_dim"], c["method"]["name"], c["dataset"].get("n_train"),
                c.get("optimizer", {}).get("lr"))


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


def members(run: Run) -> list[Run]:
    """A stack run (trainer.n_models=K) as its K models, each a run of seed s + k; others as they are."""
    k = 1 if run.problem else (run.config.get("speed") or {}).get("n_models", (run.config.get("trainer") or {}).get("n_models", 1))
    if k == 1:
        return [run]
    return [Run(run.path, {**run.config, "seed": run.config.get("seed", 0) + m}, [r for r in run.metrics if r.get("model") == m], member=m)
            for m in range(k)]


def find_runs(root: Path) -> list[Run]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give vae-report a sweep folder such as multirun/<date>/<time>")
    runs = [member for p in sorted(root.rglob(CONFIG_FILE)) if "report" not in p.relative_to(root).parts for member in members(load_run(p.parent))]
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
    """Runs (seeds) by what they are, in a stable order: data set, N_z, method, N_train, stepsize."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0, kv[0][4] or 0)))


def _plot_curves(ax, runs: list[Run], method: str, field_prefix: str, x_scale: float = 1.0, note: str = "") -> None:
    for split, style in (("train", "-"), ("test", "--")):
        x, mean, low, high = curve(runs, f"{split}_{field_prefix}")
        if not x:
            continue
        xs = [n / x_scale for n in x]
        ax.plot(xs, mean, style, color=COLOURS.get(method, "black"), label=f"{LABELS.get(method, method)}{note} ({split})")
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


def _axis_range(ax, paper: tuple[float, float]) -> tuple[float, float]:
    """The paper's y-range, widened to show where every curve ends and its highest point; the early
    transient below the range is cut off, as in the paper's own panels."""
    lines = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())]
    ends, tops = [y[-1] for y in lines], [max(y) for y in lines]
    low, high = paper
    return min([low, *(e - 0.05 * (high - low) for e in ends)]), max([high, *(t + 0.05 * (high - low) for t in tops)])


def draw_figure_2(groups: dict, dataset: str, out: Path, plt) -> list[Path]:
    """One panel per N_z: bound against training samples (log axis), as the paper's Fig. 2; runs on
    all training data only, the paper's values only beside runs of the paper's models."""
    groups = {k: v for k, v in groups.items() if k[3] is None}
    nzs = sorted({k[1] for k in groups if k[0] == dataset and k[2] in ("aevb", "wake_sleep")})
    if not nzs:
        return []
    fig, axes = plt.subplots(1, len(nzs), figsize=(3.2 * len(nzs), 3.0), squeeze=False)
    for ax, nz in zip(axes[0], nzs):
        several_lr = len({k[4] for k in groups}) > 1
        for (ds, z, method, _, lr), runs in groups.items():
            if ds == dataset and z == nz and method in ("aevb", "wake_sleep"):
                _plot_curves(ax, runs, method, "bound", note=f" lr={lr}" if several_lr else "")
        as_paper = all(r.as_in_fig2 for k, runs in groups.items() if k[:2] == (dataset, nz) for r in runs)
        for method in ("aevb", "wake_sleep") if as_paper else ():
            for split, marker in (("train", "o"), ("test", "x")):
                paper = FIG2_BOUND.get((dataset, nz, method, split), {})
                pts = [(n, v) for n, v in paper.items() if v is not None]
                if pts:
                    ax.plot(*zip(*pts), marker, color=COLOURS[method], markersize=5, mfc="none",
                            label=f"paper {LABELS[method]} ({split})")
        ax.set_xscale("log")
        ax.set_ylim(*_axis_range(ax, FIG2_YLIM[dataset]))
        ax.set_title(f"{'MNIST' if dataset == 'mnist' else 'Frey Face'}, $N_z$ = {nz}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"$\mathcal{L}$ (nats per datapoint)", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
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
        for (_, _, method, n, _), runs in groups.items():
            if (n or 50000) == n_train:
                _plot_curves(ax, runs, method, "loglik", x_scale=1e6)
        for (n, method, split), points in FIG3_LOGLIK.items():
            pts = [(s / 1e6, v) for s, v in points.items() if v is not None]
            if n == n_train and pts:
                ax.plot(*zip(*pts), "o" if split == "train" else "x", color=COLOURS[method], mfc="none", markersize=5)
        ax.set_ylim(*_axis_range(ax, FIG3_YLIM.get(n_train, (-160, -100))))
        ax.set_title(f"$N_{{train}}$ = {n_train}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated (millions)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Marginal log-likelihood", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    paths = _save(fig, out, "fig3")
    plt.close(fig)
    return paths


def _checkpoint_model(run: Run):
    """The run's trained model from its checkpoint (as vae-eval rebuilds it), or None if unreadable."""
    import torch

    from ..data import IMAGE_SHAPES
    from ..saved import read_checkpoint, rebuild_model

    shape = IMAGE_SHAPES[run.config["dataset"]["name"]]
    try:
        cfg, state = read_checkpoint(run.path, torch.device("cpu"))
        return rebuild_model(cfg, state, shape[0] * shape[1], torch.device("cpu"), run.member or 0)
    except UserError as e:
        run.problem = f"no usable checkpoint for the image figures ({str(e)[:80]})"
        return None


def manifold_grid(model, n: int):
    """Decoder means over an n x n grid of the unit square mapped through the inverse Gaussian CDF
    (Fig. 4): z = Phi^-1((k + 1/2) / n), k = 0..n-1, both axes (the endpoints 0, 1 excluded)."""
    import torch

    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z1d = torch.special.ndtri(u).float()
    z = torch.stack(torch.meshgrid(z1d.flip(0), z1d, indexing="ij"), -1).reshape(-1, 2)  # rows: z_2 top to bottom
    with torch.no_grad():
        return model.decoder(z).mean


def draw_figure_4(groups: dict, out: Path) -> list[Path]:
    """The learned 2-D manifolds: 20x20 for MNIST, 10x10 for Frey Face, as in the paper."""
    from ..data import IMAGE_SHAPES
    from ..figures import save_grid

    paths = []
    for (dataset, nz, method, _, _), runs in groups.items():
        model = _checkpoint_model(runs[0]) if nz == 2 and method in ("aevb", "full_vb") else None
        if model is not None:
            n = 20 if dataset == "mnist" else 10
            paths.append(save_grid(manifold_grid(model, n), IMAGE_SHAPES[dataset], n, out / f"fig4_{dataset}.png",
                                   dark_on_white=dataset == "mnist"))
    return paths


def draw_figure_5(groups: dict, out: Path, plt) -> list[Path]:
    """10x10 decoder means of z ~ N(0, I) for each N_z of the MNIST AEVB runs, side by side."""
    import torch

    from ..figures import tile

    panels = []
    for (dataset, nz, method, _, _), runs in groups.items():
        model = _checkpoint_model(runs[0]) if dataset == "mnist" and method == "aevb" else None
        if model is not None:
            z = torch.randn((100, nz), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                images = model.decoder(z).mean.reshape(-1, 28, 28).numpy()
            panels.append((nz, tile(1.0 - images, 10)))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2), squeeze=False)
    for ax, (letter, (nz, mosaic)) in zip(axes[0], zip("abcdefgh", panels)):
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"({letter}) {nz}-D latent space", fontsize=9)
        ax.axis("off")
    paths = _save(fig, out, "fig5")
    plt.close(fig)
    return paths


def stepsize_table(groups: dict) -> list[str]:
    """The paper's stepsize selection: final training bound per candidate, best marked (PAPER.md §6)."""
    by_setting: dict[tuple, dict] = {}
    for (dataset, nz, method, n_train, lr), runs in groups.items():
        final = [r.metrics[-1].get("train_bound") for r in runs if r.metrics[-1].get("train_bound") is not None]
        if final:
            by_setting.setdefault((dataset, nz, method, n_train), {})[lr] = (sum(final) / len(final), runs[0].metrics[-1]["samples"])
    rows = {k: v for k, v in by_setting.items() if len(v) > 1}
    if not rows:
        return []
    lines = ["## Stepsize selection (PAPER.md §6: Adagrad's stepsize from {0.01, 0.02, 0.1} by the training bound)", "",
             "| data | N_z | method | samples | " + " | ".join(f"lr={lr}" for lr in sorted({lr for v in rows.values() for lr in v})) + " | best |",
             "|" + "---|" * (5 + len({lr for v in rows.values() for lr in v}))]
    for (dataset, nz, method, n_train), by_lr in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0)):
        best = max(by_lr, key=lambda lr: by_lr[lr][0])
        cells = [f"**{by_lr[lr][0]:.1f}**" if lr == best else f"{by_lr[lr][0]:.1f}" if lr in by_lr else "—"
                 for lr in sorted({lr for v in rows.values() for lr in v})]
        lines.append(f"| {dataset} | {nz} | {method} | {max(s for _, s in by_lr.values()):.1e} | " + " | ".join(cells) + f" | {best} |")
    return lines + [""]


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _comparison_rows(groups: dict, field: str, checkpoints: tuple, paper_of) -> list[str]:
    """Rows of ours / paper / difference at each checkpoint, train and test, one per group of seeds."""
    lines = ["| data | N_z | method | N_train | hidden | lr | seeds | samples | last train / test | " + " | ".join(
        f"{split} @{n:.0e}: ours / paper / diff" for n in checkpoints for split in ("train", "test")) + " |"]
    lines.append("|" + "---|" * (9 + 2 * len(checkpoints)))
    for (dataset, nz, method, n_train, lr), runs in groups.items():
        cells = []
        for n in checkpoints:
            for split in ("train", "test"):
                ours, paper = value_at(runs, f"{split}_{field}", n), paper_of(runs[0], method, split, n)
                diff = None if ours is None or paper is None else ours - paper
                cells.append(f"{_fmt(ours)} / {_fmt(paper)} / {_fmt(diff)}")
        reached = max(r.metrics[-1]["samples"] for r in runs)
        hidden = "x".join(str(h) for h in runs[0].config["model"]["hidden"])
        last = " / ".join(_fmt(value_at(runs, f"{split}_{field}", min(r.metrics[-1]["samples"] for r in runs))) for split in ("train", "test"))
        lines.append(f"| {dataset} | {nz} | {method} | {n_train or 'all'} | {hidden} | {lr} | {len(runs)} | {reached:.2e} | {last} | "
                     + " | ".join(cells) + " |")
    return lines


def report_tables(groups: dict) -> list[str]:
    """Fig. 2's lower bounds (runs on all training data) and Fig. 3's log-likelihoods (runs that
    tracked them) beside the paper's values; the paper's column stays empty for other models."""
    fig2 = {k: v for k, v in groups.items() if k[3] is None and any(r.get("train_bound") is not None for r in v[0].metrics)}
    fig3 = {k: v for k, v in groups.items() if any(r.get("train_loglik") is not None for r in v[0].metrics)}
    lines = []
    if fig2:
        lines += ["## Lower bound beside the paper's Figure 2 (nats per datapoint)", "",
                  *_comparison_rows(fig2, "bound", CHECKPOINTS, lambda run, method, split, n: FIG2_BOUND.get(
                      (run.config["dataset"]["name"], run.config["model"]["latent_dim"], method, split), {}).get(n) if run.as_in_fig2 else None), ""]
    if fig3:
        lines += ["## Marginal log-likelihood (App. D) beside the paper's Figure 3 (nats per datapoint)", "",
                  *_comparison_rows(fig3, "loglik", FIG3_CHECKPOINTS, lambda run, method, split, n: FIG3_LOGLIK.get(
                      (run.config["dataset"].get("n_train") or 50000, method, split), {}).get(n) if run.as_in_fig3 else None), ""]
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
    figures += draw_figure_4(groups, out)
    figures += draw_figure_5(groups, out, plt)
    lines = [f"# vae-report: {root}", "", f"{len(good)} runs drawn, {len(runs) - len(good)} not drawn.", ""]
    lines += report_tables(groups)
    lines += stepsize_table(groups)
    unfinished = [r for r in good if not r.finished]
    problems = [r for r in runs if r.problem]
    if unfinished or problems:
        lines += ["## Missing", ""]
        lines += [f"- {r.label}: unfinished, {r.metrics[-1]['samples']:.3g} of {float(r.config['trainer']['max_samples']):.3g} samples" for r in unfinished]
        lines += [f"- {r.label}: {r.problem}" for r in problems]
        lines.append("")
    lines += ["## Figures", "", *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "figures": [str(p) for p in figures], "runs": len(runs),
            "drawn": len(good), "unfinished": [r.label for r in unfinished], "broken": [r.label for r in problems]}

