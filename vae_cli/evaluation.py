"""The lower bound of a data set: the one evaluation used for train and test curves alike (Fig. 2),
and the App. D estimate of its marginal likelihood (Fig. 3).

The bound is the mean over datapoints of an SGVB estimate (PAPER.md §10.7: estimator B, L = 1 by
default), evaluated in batches without gradients; its standard error over datapoints comes with it.
The log-likelihood is the mean over datapoints of `likelihood.appendix_d.appendix_d` with the paper's
settings (AEVB App. E: HMC posterior samples, 4 leapfrog steps, 50 samples per datapoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .estimators import estimate, get_estimator
from .likelihood.appendix_d import AppendixDSettings, appendix_d


@dataclass
class BoundEstimate:
    """A per-datapoint quantity (a bound or a log-likelihood estimate) averaged over a data set."""

    mean: float  # average lower bound (or log p(x) estimate) per datapoint, nats
    std_err: float  # standard error of that mean over datapoints
    n_points: int


@torch.no_grad()
def bounds_per_datapoint(model, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One SGVB estimate of the bound for each row of `x`, (n,), in float64, evaluated in batches."""
    sgvb = get_estimator(estimator)
    return torch.cat([estimate(sgvb, model, batch, n_samples, generator) for batch in x.split(batch_size)]).double()


@torch.no_grad()  # HMC takes its gradients in z under its own enable_grad
def evaluate_loglik(model, x: torch.Tensor, batch_size: int, generator: torch.Generator,
                    settings: AppendixDSettings | None = None) -> BoundEstimate:
    """Mean and standard error of the App. D estimate of log p(x) over the rows of `x` (Fig. 3)."""
    settings = settings or AppendixDSettings()
    return average(torch.cat([appendix_d(model, batch, settings, generator) for batch in x.split(batch_size)]))


def average(values: torch.Tensor) -> BoundEstimate:
    """Mean over datapoints and its standard error (the spread of the values over sqrt(n))."""
    values = values.detach().double()
    n = values.numel()
    std_err = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return BoundEstimate(values.mean().item(), std_err, n)


def evaluate_bound(model, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> BoundEstimate:
    """Mean and standard error of the per-datapoint bound over the rows of `x`."""
    return average(bounds_per_datapoint(model, x, estimator, n_samples, batch_size, generator))
