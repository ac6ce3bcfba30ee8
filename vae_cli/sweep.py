"""The runs of a sweep folder, grouped by what they are: `load_sweep(path) -> Sweep`.

Every folder under `path` holding a `config.yaml` is a run. Its config is read as this version names
it (`sweep_configs.resolved_config`: upgraded and typed, so runs of earlier versions compare with new
ones) and two runs belong to one group when their whole configs agree except in the seed, the keys
a resumed run may change (`runs.RESUMABLE_CHANGES`) and the labels `experiment_name` and `scale_name`.
A stack run (`speed.n_models=K`, metrics rows carrying "model" and "seed") is K runs of seeds
s..s+K-1, as each model of the stack computes what its separate run computes (accel/stack.py).

A seed found twice in one group (a copied folder, a run continued in another folder, a rerun) is
counted once: the run that trained longest is kept and the others are listed in `Sweep.duplicates`.
A group's `label` names the keys in which it differs from the other groups (`optimizer.name=adam`,
`model.hidden=[100]`), leaving out values that are only the defaults of a differing option (Adam's
own lr and eps beside `optimizer.name=adam`); `Group.keys` holds every differing key. Runs that
cannot be read are kept in `Sweep.problems` with the reason. No plotting here: vae_cli/jobs/report.py
draws and tabulates a Sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import UserError
from .runs import CONFIG_FILE, METRICS_FILE, RESUMABLE_CHANGES, flatten
from .sweep_configs import CHOICES, option_defaults, resolved_config

LABEL_KEYS = ("experiment_name", "scale_name")  # name a run's preset; not part of what it computes
NOT_WHAT_A_RUN_IS = RESUMABLE_CHANGES | set(LABEL_KEYS) | {"seed", "speed.n_models"}  # n_models: a stack's model is its own run
REPORT_FOLDER = "report"  # vae-report's own output folder, never read as runs


class Point(NamedTuple):
    """One evaluation point of a group: the seeds that have a value there, their mean, min and max."""

    samples: int
    seeds: int
    mean: float
    low: float
    high: float


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)  # as this version names it (upgraded and typed), nested
    metrics: list[dict] = field(default_factory=list)
    problem: str = ""  # why the run cannot be used; empty when it can
    member: int | None = None  # model k of a stack run (its rows with "model": k); None: a one-model run

    @property
    def label(self) -> str:
        return str(self.path) if self.member is None else f"{self.path} (model {self.member})"

    @property
    def flat(self) -> dict:
        return flatten(self.config)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed") or 0)

    @property
    def samples(self) -> int:
        """Training samples the run reached (its last evaluation)."""
        return self.metrics[-1]["samples"] if self.metrics else 0

    @property
    def max_samples(self) -> int:
        return int(float(self.flat.get("trainer.max_samples") or 0))

    @property
    def finished(self) -> bool:
        return bool(self.metrics) and self.samples >= self.max_samples

    def series(self, name: str) -> dict[int, float]:
        """samples -> value of metrics field `name`, where the run has one."""
        return {r["samples"]: float(r[name]) for r in self.metrics if r.get(name) is not None}


@dataclass
class Duplicate:
    """A seed found in several runs of one group: the longest kept, the others dropped."""

    seed: int
    kept: Run
    dropped: list[Run]


@dataclass
class Group:
    """Runs that differ only in their seed (one run per seed), and how the group differs from the others."""

    runs: list[Run]
    keys: dict[str, Any] = field(default_factory=dict)  # every key whose value differs between groups -> this group's
    label: str = ""  # the differing keys that are not just a differing option's defaults, "key=value, ..."
    shown: list[str] = field(default_factory=list)  # the keys the label names

    def describe(self, keys: list[str] | None = None) -> str:
        """`key=value, ...` of `keys` (default: the label's keys) that the group's config has."""
        return ", ".join(f"{k}={show(self.get(k))}" for k in (self.shown if keys is None else keys) if k in self.config)

    @property
    def config(self) -> dict:
        return self.runs[0].flat

    def get(self, key: str, default: Any = None) -> Any:
        """The group's value of a flat config key (`model.latent_dim`)."""
        return self.config.get(key, default)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def has(self, curve: str) -> bool:
        """Whether every run of the group has values of `curve`."""
        return all(run.series(curve) for run in self.runs)

    def train_field(self, running: bool) -> str:
        """The train curve's metrics field: the running average of the minibatch bounds when asked for
        and every run logged it ([K]'s train curve), else the re-evaluated bound."""
        return "train_bound_running" if running and self.has("train_bound_running") else "train_bound"

    def points(self, curve: str) -> list[Point]:
        """At every sample count any seed evaluated: how many seeds have `curve` there, mean, min, max."""
        series = [run.series(curve) for run in self.runs]
        out = []
        for n in sorted({s for one in series for s in one}):
            values = [one[n] for one in series if n in one]
            out.append(Point(n, len(values), sum(values) / len(values), min(values), max(values)))
        return out

    def value_at(self, curve: str, samples: int) -> Point | None:
        return next((p for p in self.points(curve) if p.samples == samples), None)

    def last_common(self, curve: str) -> Point | None:
        """The last evaluation every seed of the group has a value of `curve` at."""
        every = [p for p in self.points(curve) if p.seeds == len(self.runs)]
        return every[-1] if every else None


@dataclass
class Sweep:
    root: Path
    groups: list[Group]  # sorted by data set, N_z, method, label
    runs: list[Run]  # every run found (a stack counted per model), usable or not
    problems: list[Run]  # runs that cannot be used, with their `problem`
    duplicates: list[Duplicate]  # seeds counted once although found in several runs
    varying: list[str]  # the config keys whose values differ between groups

    @property
    def kept(self) -> list[Run]:
        return [run for group in self.groups for run in group.runs]

    def select(self, **where: Any) -> list[Group]:
        """Groups whose config has the given values; keys with `__` for dots: select(optimizer__name="adam")."""
        return [g for g in self.groups if all(g.get(k.replace("__", ".")) == v for k, v in where.items())]


def differing(groups: list[Group], leave_out: tuple[str, ...] = ()) -> list[str]:
    """The label keys whose values differ among `groups` (those of one figure), in label order."""
    keys = dict.fromkeys(k for g in groups for k in g.shown if k not in leave_out)
    return [k for k in keys if len({show(g.get(k)) for g in groups}) > 1]


def file_name(text: str) -> str:
    """`key=value, ...` as a file name: `key=value,...`, list brackets and quotes dropped, other odd characters `_`."""
    text = text.replace(", ", ",").translate(str.maketrans("", "", "[]{}\"' "))
    return "".join(c if c.isalnum() or c in "._=,-+" else "_" for c in text) or "all"


def show(value: Any) -> str:
    """A config value as written after `key=` on the command line: 0.001, [500,500], null, true."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return samples_text(value) if value.is_integer() and abs(value) >= 1e5 else f"{value:g}"
    return json.dumps(value, separators=(",", ":"))


def samples_text(n: float) -> str:
    """A sample count for people: 30,000 below 1e5, else 2.5e7."""
    if n < 1e5:
        return f"{int(n):,}"
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def load_run(path: Path) -> list[Run]:
    """The run in `path`, as one Run, or K of a stack run; a broken run as one Run with its problem."""
    run = Run(path)
    try:
        run.config = resolved_config(yaml.safe_load((path / CONFIG_FILE).read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip() not in ("", "^"))
        run.problem = f"unreadable config.yaml ({type(e).__name__}: {message})"
    except UserError as e:
        run.problem = f"config.yaml is not a config of this vae-cli: {e}"
    if run.problem:
        return [run]
    try:
        lines = (path / METRICS_FILE).read_text().splitlines()
        run.metrics = [json.loads(line) for line in lines if line.strip()]
        if not all(isinstance(r, dict) and isinstance(r.get("samples"), int) for r in run.metrics):
            raise ValueError("a row without its sample count")
    except FileNotFoundError:
        run.problem = "no metrics.jsonl (the run never reached its first evaluation)"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        run.problem = f"corrupt metrics.jsonl ({type(e).__name__}: {e})"
    if not run.problem and not run.metrics:
        run.problem = "metrics.jsonl is empty (the run never reached its first evaluation)"
    k = int(run.config["speed"]["n_models"])
    if run.problem or k == 1:
        return [run]
    members = []
    for m in range(k):
        rows = [r for r in run.metrics if r.get("model") == m]
        seed = rows[0].get("seed", run.seed + m) if rows else run.seed + m
        member = Run(path, {**run.config, "seed": seed}, rows, member=m)
        member.problem = "" if rows else f"no metrics rows of model {m}"
        members.append(member)
    return members


def identity(run: Run) -> str:
    """What the run is: its whole config but the seed, the resumable keys and the labels."""
    return _hashable(sorted((k, v) for k, v in run.flat.items() if k not in NOT_WHAT_A_RUN_IS))


def _drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Duplicate]]:
    by_seed: dict[int, list[Run]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, []).append(run)
    kept, duplicates = [], []
    for seed, same in sorted(by_seed.items()):
        same = sorted(same, key=lambda r: (-r.samples, -len(r.metrics), str(r.path), r.member or 0))
        kept.append(same[0])
        if len(same) > 1:
            duplicates.append(Duplicate(seed, same[0], same[1:]))
    return kept, duplicates


def _labels(groups: list[Group]) -> list[str]:
    """Name every group by the keys its config differs in from the others' (a differing option's own
    defaults left out: they follow from the option shown); fill `Group.keys`; return those keys."""
    flats = [g.config for g in groups]
    keys = sorted({k for f in flats for k in f} - NOT_WHAT_A_RUN_IS)
    varying = [k for k in keys if len({_hashable(f.get(k, "<absent>")) for f in flats}) > 1]
    defaults = [option_defaults(tuple(f.get(c) for c in CHOICES)) for f in flats]
    shown = [k for k in varying if k in CHOICES or any(f.get(k) != d.get(k) for f, d in zip(flats, defaults))]
    shown.sort(key=lambda k: (k.rpartition(".")[0], not k.endswith(".name"), k))  # a group's option first: optimizer.name, optimizer.lr
    for group, flat in zip(groups, flats):
        group.keys = {k: flat.get(k) for k in varying}
        group.shown = shown
        group.label = group.describe()
    return varying


def _order(group: Group) -> tuple:
    g = group.get
    return (str(g("dataset.name")), g("model.latent_dim") or 0, str(g("method.name")), g("dataset.n_train") or 0, group.label)


def load_sweep(path: Path | str) -> Sweep:
    """The runs under `path` (a sweep folder, or any folder holding run folders) in groups."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give a sweep folder such as multirun/<date>/<time>")
    found = [p.parent for p in sorted(root.rglob(CONFIG_FILE)) if REPORT_FOLDER not in p.relative_to(root).parts[:-1]]
    if not found:
        raise UserError(f"{root} holds no vae-train runs (no config.yaml below it); give a folder written by vae-train")
    runs = [run for folder in found for run in load_run(folder)]
    by_identity: dict[str, list[Run]] = {}
    for run in runs:
        if not run.problem:
            by_identity.setdefault(identity(run), []).append(run)
    groups, duplicates = [], []
    for same in by_identity.values():
        kept, dropped = _drop_duplicates(same)
        groups.append(Group(kept))
        duplicates += dropped
    varying = _labels(groups) if groups else []
    groups.sort(key=_order)
    return Sweep(root, groups, runs, [r for r in runs if r.problem], duplicates, varying)
