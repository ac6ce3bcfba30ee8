"""Importance sampling from the encoder: the ELBO with many samples (AEVB eq. (6)) and the importance-
weighted estimate of [Burda2016], in chunks of samples with a running logsumexp, so memory does not
grow with the number of samples.

[Burda2016] Burda, Grosse & Salakhutdinov, Importance weighted autoencoders, ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from ..checks import check
from . import Estimate, log_mean_exp_summary

K_CURVE = (1, 10, 100, 1000, 5000)  # IWAE's k of `k_curve` ([Burda2016] reports k = 5000)
CHUNK_BYTES = 16 * 2**20  # the automatic chunk: (samples, batch, D) tensors of at most 16 MiB


@dataclass
class ELBOSettings:
    n_samples: int = check(1000, "positive")  # L, samples z ~ q(z|x) per datapoint
    chunk_size: Optional[int] = check(None, "positive")  # samples drawn at once (memory ~ chunk_size x batch x D); None: `samples_per_chunk`


@dataclass
class IWAESettings:
    k: int = check(5000, "positive")  # importance samples per datapoint ([Burda2016]: 5000)
    chunk_size: Optional[int] = check(None, "positive")  # samples drawn at once, whatever k; None: `samples_per_chunk`
    k_curve: bool = False  # also report the estimate after the first 1, 10, 100, 1000, 5000 samples


def samples_per_chunk(chunk_size: int | None, x: torch.Tensor) -> int:
    """`chunk_size`, or if None as many samples as keep a chunk's (samples, batch, D) tensors within
    CHUNK_BYTES. Larger tensors glibc's malloc may map afresh from the OS each time they are made, and
    the page faults of touching them made IWAE over the MNIST test set 1.35x slower with 2 threads at
    100 samples x 100 points (31 MB each; README, Choices); within 16 MiB it reuses its own heap."""
    if chunk_size is not None:
        return chunk_size
    return max(1, CHUNK_BYTES // (x.numel() * x.element_size()))  # a chunk's tensors: samples x the bytes of x


def chunk_sizes(n: int, chunk_size: int, marks: Sequence[int] = ()) -> list[int]:
    """Sizes of consecutive chunks covering n samples, at most chunk_size each, with a chunk
    boundary at every mark below n (so prefix estimates can be read off)."""
    sizes, done = [], 0
    for stop in sorted({m for m in marks if 0 < m < n} | {n}):
        while done < stop:
            sizes.append(min(chunk_size, stop - done))
            done += sizes[-1]
    return sizes


def log_weights(model, x: torch.Tensor, sizes: Sequence[int], generator: torch.Generator) -> Iterator[torch.Tensor]:
    """log p(x, z) - log q(z|x) for z ~ q(z|x), one `(c, M)` tensor per chunk size c."""
    q = model.encoder(x)
    for c in sizes:
        z = q.rsample(c, generator)  # (c, M, J)
        yield (model.log_joint(x, z) - q.log_prob(z)).double()


@torch.no_grad()
def elbo(model, x: torch.Tensor, settings: ELBOSettings, generator: torch.Generator) -> Estimate:
    """The lower bound, AEVB eq. (6) with L = n_samples; its standard error is sd(log w) / sqrt(L)."""
    n = settings.n_samples
    total = total_sq = shift = None
    for lw in log_weights(model, x, chunk_sizes(n, samples_per_chunk(settings.chunk_size, x)), generator):
        if shift is None:
            shift, total, total_sq = lw.mean(0), torch.zeros_like(lw[0]), torch.zeros_like(lw[0])
        total += (lw - shift).sum(0)
        total_sq += ((lw - shift) ** 2).sum(0)
    mean = total / n
    var = (total_sq - n * mean**2) / (n - 1) if n > 1 else torch.full_like(mean, math.nan)
    return Estimate(shift + mean, torch.sqrt(var.clamp(min=0.0) / n))


@torch.no_grad()
def iwae(model, x: torch.Tensor, settings: IWAESettings, generator: torch.Generator) -> Estimate:
    """log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) [Burda2016]; a running logsumexp over
    chunks, so memory is set by the chunk (`samples_per_chunk`), not k. With `k_curve`, diagnostics
    `iwae_k<m>` hold the estimate from the first m samples (nested, so the curve is cheap and smooth)."""
    k = settings.k
    marks = [m for m in K_CURVE if m < k] + [k] if settings.k_curve else []
    lse = lse_sq = None
    seen, curve = 0, {}
    for lw in log_weights(model, x, chunk_sizes(k, samples_per_chunk(settings.chunk_size, x), marks), generator):
        c_lse, c_sq = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
        lse, lse_sq = (c_lse, c_sq) if lse is None else (torch.logaddexp(lse, c_lse), torch.logaddexp(lse_sq, c_sq))
        seen += lw.shape[0]
        if seen in marks:
            curve[f"iwae_k{seen}"] = lse - math.log(seen)
    log_px, ess, std_err = log_mean_exp_summary(lse, lse_sq, k)
    return Estimate(log_px, std_err, {"ess": ess, **curve})
