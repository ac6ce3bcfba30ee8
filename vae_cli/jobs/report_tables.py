"""The tables of `vae-report`: the groups of a sweep beside the paper's values, as Markdown for
report.md and as CSV (report.csv: one row per group and evaluation point, for pandas), and the
paper's stepsize selection (AEVB §5, PAPER.md §6) among groups that differ in `optimizer.lr` alone.

A value of a group is the mean over the seeds that have one at that sample count; the Markdown cells
say how many seeds that is, the CSV has the count, min and max beside the mean. The paper's value
and our difference to it stand only beside groups that train one of the paper's models.
"""

from __future__ import annotations

import csv
import io
import json

from ..paper_values import CHECKPOINTS, FIG3_CHECKPOINTS, paper_curve
from ..sweep import NOT_WHAT_A_RUN_IS, Group, Sweep, samples_text, show

CSV_CURVES = {"train_bound": ("bound", "train"), "train_bound_running": ("bound", "train"), "test_bound": ("bound", "test"),
              "train_loglik": ("loglik", "train"), "test_loglik": ("loglik", "test")}  # field -> the paper's curve it compares with


def fmt(value: float | None, sign: bool = False) -> str:
    return "—" if value is None else f"{value:+.1f}" if sign else f"{value:.1f}"


def _seeds(group: Group) -> str:
    return f"{len(group.runs)} ({', '.join(map(str, group.seeds))})"


def _cell(group: Group, field: str, quantity: str, split: str, samples: int) -> str:
    """"ours (seeds) / paper / ours - paper" at `samples`."""
    point, paper = group.value_at(field, samples), paper_curve(group.config, quantity, split).get(samples)
    ours = "—" if point is None else f"{point.mean:.1f} ({point.seeds})"
    return f"{ours} / {fmt(paper)} / {fmt(None if point is None or paper is None else point.mean - paper, sign=True)}"


def comparison(groups: list[Group], quantity: str, fields, checkpoints: tuple[int, ...]) -> list[str]:
    """One row per group: its seeds, how far they got, the last evaluation all share, and ours / the
    paper's / the difference at each of `checkpoints`, train and test."""
    head = ["data", "N_z", "method", "group", "seeds", "reached", "last shared: samples", "train", "test"]
    head += [f"{split} @{samples_text(n)}" for n in checkpoints for split in ("train", "test")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        train, test = fields(g)["train"], fields(g)["test"]
        last = g.last_common(train) or g.last_common(test)
        at = lambda field: g.value_at(field, last.samples) if last else None  # noqa: E731
        cells = [str(g.get("dataset.name")), str(g.get("model.latent_dim")), str(g.get("method.name")), g.label or "all runs", _seeds(g),
                 samples_text(max(r.samples for r in g.runs)), samples_text(last.samples) if last else "—",
                 fmt(at(train).mean if at(train) else None), fmt(at(test).mean if at(test) else None)]
        cells += [_cell(g, field, quantity, split, n) for n in checkpoints for split, field in (("train", train), ("test", test))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_tables(sweep: Sweep, running: bool) -> list[str]:
    """Fig. 2's lower bounds and Fig. 3's log-likelihoods of every group that has them."""
    bound = [g for g in sweep.groups if g.has("train_bound") or g.has("test_bound")]
    loglik = [g for g in sweep.groups if g.has("train_loglik") or g.has("test_loglik")]
    lines = []
    if bound:
        which = "the running average of the minibatch bounds (see Notes for groups without it)" if running else "the re-evaluated bound"
        lines += ["## Lower bound beside the paper's Figure 2 (nats per datapoint)", "",
                  f"Train: {which}. Cells at 10^k samples: ours (seeds averaged) / paper / ours - paper; the paper's values only "
                  "beside its models.", "",
                  *comparison(bound, "bound", lambda g: {"train": g.train_field(running), "test": "test_bound"}, CHECKPOINTS), ""]
    if loglik:
        lines += ["## Marginal log-likelihood (App. D) beside the paper's Figure 3 (nats per datapoint)", "",
                  *comparison(loglik, "loglik", lambda g: {"train": "train_loglik", "test": "test_loglik"}, FIG3_CHECKPOINTS), ""]
    return lines


def csv_table(sweep: Sweep) -> str:
    """report.csv: a row per group and evaluation point; the group's differing keys as columns, then
    per curve the seeds averaged, mean, min, max, and the paper's value and the difference."""
    curves = [c for c in CSV_CURVES if any(g.points(c) for g in sweep.groups)]
    head = ["group", *sweep.varying, "samples"]
    for c in curves:
        head += [f"{c}_seeds", f"{c}_mean", f"{c}_min", f"{c}_max", f"{c}_paper", f"{c}_diff"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for g in sweep.groups:
        by_curve = {c: {p.samples: p for p in g.points(c)} for c in curves}
        papers = {c: paper_curve(g.config, *CSV_CURVES[c]) for c in curves}
        for n in sorted({n for points in by_curve.values() for n in points}):
            row = [g.label or "all runs", *(_csv_value(g.keys.get(k)) for k in sweep.varying), n]
            for c in curves:
                p, paper = by_curve[c].get(n), papers[c].get(n)
                row += [p.seeds, p.mean, p.low, p.high] if p else [0, "", "", ""]
                row += [paper if paper is not None else "", p.mean - paper if p and paper is not None else ""]
            writer.writerow(row)
    return buffer.getvalue()


def _csv_value(value) -> str:
    """A config value in a CSV cell: empty for null, lists and booleans as JSON."""
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def stepsize_table(sweep: Sweep, running: bool) -> list[str]:
    """The paper's stepsize selection: groups alike in every key but optimizer.lr compared by their
    training bound at the last evaluation all their seeds share; the best marked."""
    sets: dict[str, list[Group]] = {}
    for g in sweep.groups:
        rest = sorted((k, json.dumps(v)) for k, v in g.config.items() if k not in NOT_WHAT_A_RUN_IS and k != "optimizer.lr")
        sets.setdefault(json.dumps(rest), []).append(g)
    rows = []
    for same in (s for s in sets.values() if len(s) > 1):
        fields = {id(g): g.train_field(running) for g in same}
        shared = set.intersection(*({p.samples for p in g.points(fields[id(g)]) if p.seeds == len(g.runs)} for g in same))
        if not shared:
            continue
        at = max(shared)
        values = {g.get("optimizer.lr"): g.value_at(fields[id(g)], at) for g in same}
        label = same[0].describe([k for k in same[0].shown if k != "optimizer.lr"]) or "all runs"
        rows.append((label, same[0].get("optimizer.name"), at, values))
    if not rows:
        return []
    lrs = sorted({lr for *_, values in rows for lr in values})
    which = "running average of the minibatch bounds" if running else "re-evaluated training bound"
    lines = ["## Stepsize selection (PAPER.md §6: the stepsize from {0.01, 0.02, 0.1} by the training bound)", "",
             f"Groups that differ in optimizer.lr alone, compared by the {which} at the last evaluation all their seeds share "
             "(mean over seeds, seeds in brackets).", "",
             "| group | optimizer | samples | " + " | ".join(f"lr={show(lr)}" for lr in lrs) + " | best |", "|" + "---|" * (4 + len(lrs))]
    for label, optimizer, at, values in rows:
        best = max(values, key=lambda lr: values[lr].mean)
        bold = lambda lr: f"**{values[lr].mean:.1f}**" if lr == best else f"{values[lr].mean:.1f}"  # noqa: E731
        cells = ["—" if lr not in values else f"{bold(lr)} ({values[lr].seeds})" for lr in lrs]
        lines.append(f"| {label} | {optimizer} | {samples_text(at)} | " + " | ".join(cells) + f" | {show(best)} |")
    return lines + [""]


def groups_table(sweep: Sweep) -> list[str]:
    """Every group: its label, seeds, folders, how far they got, and every key it differs in."""
    lines = ["## Groups", "", "Runs are grouped by their whole config but the seed, the settings a resumed run may change and the "
             "preset's name; a group's label names the keys it differs in (an option's own defaults left out, listed here).", "",
             "| group | seeds | runs | samples reached | preset | differing keys |", "|---|---|---|---|---|---|"]
    for g in sweep.groups:
        folders = ", ".join(_short(sweep, r) for r in g.runs)
        presets = ", ".join(sorted({f"{r.config.get('experiment_name') or 'no preset'} ({r.config.get('scale_name')})" for r in g.runs}))
        reached = ", ".join(samples_text(r.samples) for r in g.runs)
        keys = ", ".join(f"{k}={show(v)}" for k, v in g.keys.items()) or "—"
        lines.append(f"| {g.label or 'all runs'} | {_seeds(g)} | {folders} | {reached} | {presets} | {keys} |")
    return lines + [""]


def _short(sweep: Sweep, run) -> str:
    try:
        path = str(run.path.relative_to(sweep.root)) or "."
    except ValueError:
        path = str(run.path)
    return path if run.member is None else f"{path} (model {run.member})"


def duplicates_section(sweep: Sweep) -> list[str]:
    if not sweep.duplicates:
        return []
    lines = ["## Seeds counted once", "", "A seed found in several runs of one group (a copy, a continuation in another folder, a rerun) "
             "is counted once: the run that trained longest is kept.", ""]
    for d in sweep.duplicates:
        group = next((g.label for g in sweep.groups if d.kept in g.runs), "")
        dropped = "; ".join(f"{_short(sweep, r)} ({samples_text(r.samples)} samples)" for r in d.dropped)
        lines.append(f"- seed {d.seed} of {group or 'all runs'}: kept {_short(sweep, d.kept)} ({samples_text(d.kept.samples)} samples); "
                     f"dropped {dropped}")
    return lines + [""]
