"""The curves of `vae-report`: Figure 2 (lower bound, log x-axis, one panel per N_z) and Figure 3
(App. D marginal log-likelihood, x in millions, one panel per N_train), beside the paper's values.

Each group of runs (`vae_cli.sweep`) is one colour: the paper's (AEVB red, wake-sleep green, MCEM blue)
when the groups of a figure differ only in the method, else one colour per value of what the sweep
varies. Train solid, test dashed. A group of several seeds is drawn as its mean with a band from min
to max where every seed has a value, and each seed's own curve thin beyond that. The y-axis is the
paper's when the curves lie within it, else widened to the data with the paper's window shaded. The
legend sits below the panels, the paper's markers in it. Every figure is written as PNG and PDF.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..paper_values import (DATA_NAMES, FIG2_XLIM, FIG2_YLIM, FIG3_YLIM, METHOD_COLOURS, METHOD_LABELS, fig3_train_size,
                            paper_curve)
from ..runs import atomic_write_bytes
from ..sweep import Group, differing, samples_text

PALETTE = ("tab:orange", "tab:cyan", "tab:brown", "tab:pink", "tab:olive", "navy", "tab:gray", "black", "gold")  # not the methods' colours
STYLES = {"train": "-", "test": "--"}
MARKERS = {"train": "o", "test": "x"}
DPI = 120  # of the PNGs; the image figures size their axes so that a model's pixel is a whole number of these
PAPER_BAND = "0.9"  # grey of the paper's y-window when the axis is wider
FIG3_FIRST = 2.5e6  # Fig. 3's first evaluation after the start (conf/experiment/fig3.yaml): its y-axis leaves out the untrained model


def save_figure(fig, out: Path, name: str, plt) -> list[Path]:
    """`name`.png and `name`.pdf in `out`, written atomically; the figure is closed."""
    paths = []
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=DPI, bbox_inches="tight")
        atomic_write_bytes(out / f"{name}.{ext}", buffer.getvalue())
        paths.append(out / f"{name}.{ext}")
    plt.close(fig)
    return paths


def series_colours(groups: list[Group], panel_keys: tuple[str, ...]) -> tuple[dict[int, str], dict[int, str]]:
    """A colour and a legend name per group (by id): the paper's method colours when the groups differ
    in nothing but the method (besides the panel's keys), else one palette colour per series."""
    keys = differing(groups, panel_keys)
    names, colours = {}, {}
    if set(keys) <= {"method.name"}:
        for g in groups:
            method = g.get("method.name")
            names[id(g)], colours[id(g)] = METHOD_LABELS.get(method, method), METHOD_COLOURS.get(method, "black")
        return colours, names
    labels = list(dict.fromkeys(g.describe(keys) for g in groups))
    cmap = None
    if len(labels) > len(PALETTE):
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
    by_label = {label: cmap(i / (len(labels) - 1)) if cmap else PALETTE[i] for i, label in enumerate(labels)}
    for g in groups:
        names[id(g)] = g.describe(keys)
        colours[id(g)] = by_label[names[id(g)]]
    return colours, names


def y_limits(paper: tuple[float, float], values: list[float]) -> tuple[float, float, bool]:
    """The paper's y-range when every value lies within it; else the range widened to the values, with
    a margin (True: widened). The few lowest values may leave the axis: it reaches down to the lower
    quartile less twice the span above it (a large stepsize's first evaluation, thousands of nats
    down, would flatten every other curve)."""
    if not values or (paper[0] <= min(values) and max(values) <= paper[1]):
        return paper[0], paper[1], False
    ordered = sorted(values)
    q25 = ordered[len(ordered) // 4]
    lowest = max(ordered[0], q25 - 2 * (ordered[-1] - q25))
    low, high = min(paper[0], lowest), max(paper[1], ordered[-1])
    margin = 0.04 * (high - low)
    return low - margin, high + margin, True


def draw_group(ax, group: Group, field: str, colour, style: str, x_scale: float, x_from: float) -> tuple[list[tuple[float, float]], bool]:
    """The mean of `field` over the group's seeds where all have values (with a min-max band), each
    seed's own curve thin beyond that; the (x, y) points drawn (for the axis limits), and whether
    single seeds were drawn."""
    points = [p for p in group.points(field) if p.samples >= x_from]
    full = [p for p in points if p.seeds == len(group.runs)]
    drawn = []
    if full:
        xs = [p.samples / x_scale for p in full]
        ax.plot(xs, [p.mean for p in full], style, color=colour, linewidth=1.4, marker="." if len(full) < 4 else None)  # a short run: visible
        drawn += [(x, p.mean) for x, p in zip(xs, full)]
        if len(group.runs) > 1:
            ax.fill_between(xs, [p.low for p in full], [p.high for p in full], color=colour, alpha=0.15, linewidth=0)
            drawn += [(x, p.low) for x, p in zip(xs, full)] + [(x, p.high) for x, p in zip(xs, full)]
    start, tails = full[-1].samples if full else x_from, False
    for run in group.runs:
        tail = sorted((n, v) for n, v in run.series(field).items() if n >= start)
        if len(tail) > 1 or (tail and not full):
            xs = [n / x_scale for n, _ in tail]
            ax.plot(xs, [v for _, v in tail], style, color=colour, linewidth=0.7, alpha=0.7, marker="." if len(tail) < 2 else None)
            drawn, tails = drawn + list(zip(xs, (v for _, v in tail))), True
    return drawn, tails


def _legend(fig, handles: list, width: float) -> None:
    """One legend below all panels, off the data."""
    longest = max(len(h.get_label()) for h in handles)
    ncol = max(1, min(len(handles), int(width / (0.3 + 0.062 * longest))))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=7, frameon=False)


def _style_handles(train_label: str, several_seeds: bool, tails: bool, paper_window: bool) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="black", linestyle="-", label=train_label), Line2D([], [], color="black", linestyle="--", label="test")]
    if several_seeds:
        handles.append(Patch(color="black", alpha=0.15, label="min-max over seeds"))
    if tails:
        handles.append(Line2D([], [], color="black", linewidth=0.7, alpha=0.7, label="single seeds, beyond the last evaluation all share"))
    if paper_window:
        handles.append(Patch(color=PAPER_BAND, label="the paper's y-range"))
    return handles


def _paper_markers(ax, groups: list[Group], quantity: str, x_scale: float, x_max: float) -> tuple[list, list[int]]:
    """The paper's values beside the groups that train its models, within the runs' x-range; legend
    handles, and the sample counts of the paper's values beyond the runs."""
    from matplotlib.lines import Line2D

    handles, beyond = [], []
    for method in dict.fromkeys(g.get("method.name") for g in groups):
        config = next((g.config for g in groups if g.get("method.name") == method and paper_curve(g.config, quantity, "train")), None)
        for split in ("train", "test") if config else ():
            points = sorted(paper_curve(config, quantity, split).items())
            near = [(n / x_scale, v) for n, v in points if n <= 1.5 * x_max]
            beyond += [n for n, _ in points if n > 1.5 * x_max]
            if near:
                ax.plot(*zip(*near), MARKERS[split], color=METHOD_COLOURS[method], markersize=6, mfc="none", zorder=3)
                handles.append(Line2D([], [], marker=MARKERS[split], color=METHOD_COLOURS[method], mfc="none", linestyle="",
                                      label=f"paper {METHOD_LABELS.get(method, method)} ({split})"))
    return handles, beyond


def _log_ticks(ax) -> None:
    """Log x-ticks that fit a small panel: powers of ten, and 2 and 5 times them on a short axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_xlim()
    decades = math.log10(high / low) if low > 0 else 9
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 1.6 else (1.0, 3.0) if decades <= 2.6 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _power_of_ten(x: float, _pos=None) -> str:
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = round(x / 10**exponent, 1)
    return f"$10^{{{exponent}}}$" if mantissa == 1 else f"${mantissa:g}\\cdot10^{{{exponent}}}$"


def _panels(plt, n: int, width: float = 3.3, height: float = 3.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _finish_axis(ax, drawn: list[tuple[float, float]], paper_ylim: tuple[float, float], x_from: float, clip_x: bool) -> bool:
    """y-limits from the points drawn from `x_from` on (the paper's x-window; all points when the runs
    stay short of ten times it), the paper's y-range shaded when the axis is wider (then True); with
    `clip_x` the x-axis starts at `x_from` too."""
    reach = max((x for x, _ in drawn), default=0)
    in_window = reach >= 10 * x_from > 0
    low, high, widened = y_limits(paper_ylim, [y for x, y in drawn if x >= x_from or not in_window])
    ax.set_ylim(low, high)
    if in_window and clip_x:
        ax.set_xlim(left=x_from)
    if widened:
        ax.axhspan(*paper_ylim, color=PAPER_BAND, zorder=0, linewidth=0)
    if ax.get_xscale() == "log":
        _log_ticks(ax)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    return widened


def draw_curves(plt, groups: list[Group], out: Path, name: str, spec: dict) -> list[Path]:
    """One panel per value of spec["panel"](group): the curves spec["fields"](group) = {split: field}
    against samples, the paper's values, one legend below the panels."""
    from matplotlib.lines import Line2D

    panels: dict = {}
    for g in groups:
        panels.setdefault(spec["panel"](g), []).append(g)
    keys = sorted(panels, key=lambda k: (k is None, k))
    colours, names = series_colours(groups, spec["panel_keys"])
    fig, axes = _panels(plt, len(keys))
    series, shown, paper, beyond, widened, tails = {}, set(), {}, set(), False, False
    for ax, key in zip(axes, keys):
        drawn = []
        for g in panels[key]:
            for split, field in spec["fields"](g).items():
                points, thin = draw_group(ax, g, field, colours[id(g)], STYLES[split], spec["x_scale"], spec["x_from"])
                drawn, tails = drawn + points, tails or thin
                shown |= {names[id(g)]} if points else set()
            series.setdefault(names[id(g)], colours[id(g)])
        reach = max((x for x, _ in drawn), default=0) * spec["x_scale"]
        markers, later = _paper_markers(ax, panels[key], spec["quantity"], spec["x_scale"], reach)
        paper.update({h.get_label(): h for h in markers})
        beyond.update(later)
        spec["axes"](ax, key)
        widened |= _finish_axis(ax, drawn, spec["y_window"](key), spec["x_window"](key) / spec["x_scale"], spec["clip_x"])
    axes[0].set_ylabel(spec["ylabel"], fontsize=8)
    styles = _style_handles(spec["train_label"], any(len(g.runs) > 1 for g in groups), tails, widened)
    lines = [Line2D([], [], color=colour, linewidth=2, label=(label or "all runs") + ("" if label in shown else " (no evaluation to draw yet)"))
             for label, colour in series.items()]
    handles = [*lines, *styles, *paper.values()]
    if beyond:
        from matplotlib.patches import Patch

        at = ", ".join(samples_text(n) for n in sorted(beyond))
        handles.append(Patch(color="none", label=f"the paper's values (at {at} samples) lie beyond these runs"))
    fig.tight_layout()
    _legend(fig, handles, fig.get_figwidth())
    return save_figure(fig, out, name, plt)


def draw_figure_2(plt, groups: list[Group], dataset: str, out: Path, running: bool) -> list[Path]:
    """Lower bound against training samples (log axis), one panel per N_z, as the paper's Fig. 2."""
    groups = [g for g in groups if g.get("dataset.name") == dataset and (g.has("train_bound") or g.has("test_bound"))]
    if not groups:
        return []
    fields = lambda g: {"train": g.train_field(running), "test": "test_bound"}  # noqa: E731

    def axes(ax, nz):
        ax.set_xscale("log")
        ax.set_title(f"{DATA_NAMES.get(dataset, dataset)}, $N_z$ = {nz}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated", fontsize=8)

    running_used = running and any(g.train_field(True) == "train_bound_running" for g in groups)
    spec = dict(panel=lambda g: g.get("model.latent_dim"), panel_keys=("model.latent_dim", "dataset.name"), fields=fields,
                quantity="bound", x_scale=1.0, x_from=1, axes=axes, x_window=lambda nz: FIG2_XLIM.get(dataset, (1e5, 1e8))[0], clip_x=True,
                y_window=lambda nz: FIG2_YLIM.get(dataset, (-150, -95)), ylabel=r"$\mathcal{L}$ (nats per datapoint)",
                train_label="train (running average of the minibatch bounds)" if running_used else "train")
    return draw_curves(plt, groups, out, f"fig2_{dataset}", spec)


def draw_figure_3(plt, groups: list[Group], out: Path) -> list[Path]:
    """App. D marginal log-likelihood against samples (millions, linear), one panel per N_train."""
    groups = [g for g in groups if g.has("train_loglik") or g.has("test_loglik")]
    if not groups:
        return []

    def axes(ax, key):
        dataset, n_train = key
        ax.set_title(f"{DATA_NAMES.get(dataset, dataset)}, $N_{{train}}$ = {n_train or 'all'}", fontsize=9)
        ax.set_xlabel("# Training samples evaluated (millions)", fontsize=8)

    spec = dict(panel=lambda g: (g.get("dataset.name"), fig3_train_size(g.config)), panel_keys=("dataset.n_train", "dataset.name"),
                fields=lambda g: {"train": "train_loglik", "test": "test_loglik"}, quantity="loglik", x_scale=1e6, x_from=0,
                axes=axes, x_window=lambda key: FIG3_FIRST, clip_x=False,
                y_window=lambda key: FIG3_YLIM.get(key[1], (-160, -100)), ylabel="Marginal log-likelihood (nats per datapoint)",
                train_label="train")
    return draw_curves(plt, groups, out, "fig3", spec)
