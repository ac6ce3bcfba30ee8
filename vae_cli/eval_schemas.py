"""Typed schemas of vae-eval's config (`conf/eval.yaml`): its own keys, and one option of the `likelihood`
group per estimator, each the estimator's settings dataclass (in `likelihood/`) plus the `name` that picks it."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from omegaconf import MISSING

from .checks import check
from .likelihood import SETTINGS
from .likelihood.bdmc import BDMCSettings


@dataclass
class EvalDatasetConfig:
    root: Optional[str] = None  # folder with the data files; null: where the run found them


@dataclass
class EvalConfig:
    likelihood: Any = MISSING  # one option of conf/likelihood/
    run_dir: str = MISSING  # the vae-train run folder to evaluate
    split: str = "test"  # train | test | valid (MNIST only)
    n_points: Optional[int] = check(None, "positive")  # the first n points of the split; null: all
    batch_size: int = check(100, "positive")  # datapoints an estimator call
    seed: int = 0  # the estimator's noise
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = check(None, "positive")  # torch intra-op threads; null: 1 for ais, appendix_d, bdmc (HMC on small
    # tensors, where threads only wait on each other), else the cores this process may use (os.sched_getaffinity), at most torch's default
    progress: bool = True  # a bar on stderr: points, points/s, time left, the running mean estimate
    flush_denormals: bool = True  # CPU: subnormal floats read and written as 0 (`jobs.configure_cpu`)
    theta_draws: int = check(0, "non_negative")  # full-VB runs: 0 at theta = q(theta)'s mean; K averaged over K draws theta ~ q
    member: int = check(0, "non_negative")  # stack runs (speed.n_models=K): model 0..K-1, the one trained as seed s + member
    dataset: EvalDatasetConfig = field(default_factory=EvalDatasetConfig)


def likelihood_schema(name: str, settings: type) -> type:
    """The schema of conf/likelihood/<name>.yaml: the estimator's settings plus the `name` that picks it."""
    return make_dataclass(f"{settings.__name__}Option", [("name", str, field(default=name))], bases=(settings,))


LIKELIHOOD_SCHEMAS = {name: likelihood_schema(name, settings) for name, settings in {**SETTINGS, "bdmc": BDMCSettings}.items()}
