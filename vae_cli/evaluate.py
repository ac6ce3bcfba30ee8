"""The lower bound of a data set: the one evaluation used for train and test curves alike (Fig. 2).

The bound is the mean over datapoints of an SGVB estimate (PAPER.md §10.7: estimator B, L = 1 by
default), evaluated in batches without gradients; its standard error over datapoints comes with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .estimators import get_estimator


@dataclass
class BoundEstimate:
    mean: float  # average lower bound per datapoint, nats
    std_err: float  # standard error of that mean over datapoints
    n_points: int


@torch.no_grad()
def bounds_per_datapoint(model, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One SGVB estimate of the bound for each row of `x`, (n,), in float64, evaluated in batches."""
    estimate = get_estimator(estimator)
    return torch.cat([estimate(model, batch, n_samples, generator) for batch in x.split(batch_size)]).double()


def summarize_bounds(bounds: torch.Tensor) -> BoundEstimate:
    """Mean and standard error over datapoints of per-datapoint bounds."""
    n = bounds.numel()
    std_err = bounds.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return BoundEstimate(bounds.mean().item(), std_err, n)


def evaluate_bound(model, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> BoundEstimate:
    """Mean and standard error of the per-datapoint bound over the rows of `x`."""
    return summarize_bounds(bounds_per_datapoint(model, x, estimator, n_samples, batch_size, generator))


def evaluation_generator(device: torch.device, seed: int, samples: int) -> torch.Generator:
    """A generator for the evaluation at `samples`: a pure function of the seed and the counter,
    so evaluations never disturb the training noise and a resumed run evaluates identically."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + samples)
