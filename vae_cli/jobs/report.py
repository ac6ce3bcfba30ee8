"""`vae-report DIR [--train-curve evaluated|running]`: the paper's figures and tables from the runs under DIR.

The runs are read and grouped by `vae_cli.sweep.load_sweep`: one group per config (all but the seed
and the settings a resumed run may change), each seed counted once. Drawn beside the paper's own
numbers (PAPER.md §7, `paper_values.py`):
- Figure 2 (`fig2_<data>`): lower bound against training samples (log axis), one panel per N_z
  (report_figures.py);
- Figure 3 (`fig3`): App. D marginal log-likelihood against samples (millions), one panel per N_train;
- Figure 4 (`fig4_<data>[_<what differs>]`): decoder means over the Phi^-1 grid of the unit square,
  one file per group with N_z = 2, and Figure 5 (`fig5`): decoder means of z ~ N(0, I), one panel per
  group of MNIST models, both from checkpoints (report_images.py).
`report.md` holds the groups, the seeds counted once, our values at 1e6, 1e7, 1e8 samples beside the
paper's, the stepsize choice among groups that differ in `optimizer.lr` alone, and what is missing;
`report.csv` the same values at every evaluation (report_tables.py). The train curve is the
re-evaluated bound (`train_bound`), or with `--train-curve running` the running average of the
minibatch bounds since the previous evaluation (`train_bound_running`, the author's code's curve;
groups without it fall back to the evaluated one, and report.md says which). Broken or unfinished
runs are listed and the rest is drawn. Outputs go to DIR/report/ (PNG and PDF figures, report.md,
report.csv), rewritten by each report.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..paper_values import FIG2_PANELS
from ..runs import atomic_write_text
from ..sweep import REPORT_FOLDER, Sweep, load_sweep, samples_text
from .report_tables import csv_table, duplicates_section, groups_table, markdown_tables, stepsize_table

TRAIN_CURVES = ("evaluated", "running")


def draw_figures(sweep: Sweep, out: Path, running: bool) -> tuple[list[Path], list]:
    """Every figure the groups allow; the runs whose checkpoints the image figures could not use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report_figures import draw_figure_2, draw_figure_3
    from .report_images import draw_figure_4, draw_figure_5

    datasets = list(dict.fromkeys([*FIG2_PANELS, *(g.get("dataset.name") for g in sweep.groups)]))
    figures, missing = [], []
    for dataset in datasets:
        figures += draw_figure_2(plt, sweep.groups, dataset, out, running)
    figures += draw_figure_3(plt, sweep.groups, out)
    figures += draw_figure_4(plt, sweep.groups, out, missing)
    figures += draw_figure_5(plt, sweep.groups, out, missing)
    return figures, missing


def notes(sweep: Sweep, running: bool) -> list[str]:
    """Which train curve each group shows, where it is not the one asked for."""
    bound = [g for g in sweep.groups if g.has("train_bound")]
    fallback = [g for g in bound if running and g.train_field(True) != "train_bound_running"]
    if not running or not bound:
        return []
    lines = ["## Notes", ""]
    if not fallback:
        return lines + ["- Train curves: the running average of the minibatch bounds since the previous evaluation, in every group.", ""]
    for g in fallback:
        lacking = [r.label for r in g.runs if not r.series("train_bound_running")]
        lines.append(f"- {g.label or 'all runs'}: train curve re-evaluated (train_bound), as these runs lack train_bound_running: "
                     + ", ".join(lacking))
    return lines + [""]


def missing_section(sweep: Sweep, images_missing: list) -> list[str]:
    unfinished = [r for r in sweep.kept if not r.finished]
    if not (unfinished or sweep.problems or images_missing):
        return []
    lines = ["## Missing", ""]
    lines += [f"- {r.label}: unfinished, {samples_text(r.samples)} of {samples_text(r.max_samples)} samples" for r in unfinished]
    lines += [f"- {r.label}: not drawn: {r.problem}" for r in sweep.problems]
    lines += [f"- {r.label}: {reason}" for r, reason in images_missing]
    return lines + [""]


def report(root: Path, train_curve: str = "evaluated") -> dict:
    """Draw every figure the runs under `root` allow, write report.md and report.csv; return what was made."""
    if train_curve not in TRAIN_CURVES:
        raise UserError(f"--train-curve {train_curve} is not one of {', '.join(TRAIN_CURVES)}")
    running = train_curve == "running"
    root = Path(root)
    sweep = load_sweep(root)
    if not sweep.groups:
        first = sweep.problems[0]
        raise UserError(f"no run under {root} has metrics to draw ({first.label}: {first.problem}); train first or point at another sweep")
    out = root / REPORT_FOLDER
    figures, images_missing = draw_figures(sweep, out, running)
    csv_path = out / "report.csv"
    atomic_write_text(csv_path, csv_table(sweep))
    kept = sweep.kept
    dropped = sum(len(d.dropped) for d in sweep.duplicates)
    lines = [f"# vae-report: {root}", "",
             f"{len(sweep.runs)} runs found: {len(kept)} drawn in {len(sweep.groups)} groups, {dropped} dropped as duplicate seeds, "
             f"{len(sweep.problems)} not readable. Train curve: {train_curve}. Every value below at every evaluation: "
             f"[{csv_path.name}]({csv_path.name}).", ""]
    lines += groups_table(sweep) + duplicates_section(sweep) + markdown_tables(sweep, running) + stepsize_table(sweep, running)
    lines += notes(sweep, running) + missing_section(sweep, images_missing)
    lines += ["## Figures", "", *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "csv": str(csv_path), "figures": [str(p) for p in figures], "runs": len(sweep.runs),
            "drawn": len(kept), "groups": len(sweep.groups), "train_curve": train_curve,
            "duplicates": [r.label for d in sweep.duplicates for r in d.dropped],
            "unfinished": [r.label for r in kept if not r.finished], "broken": [r.label for r in sweep.problems],
            "no_image": [r.label for r, _ in images_missing]}
