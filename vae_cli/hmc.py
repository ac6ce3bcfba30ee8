"""Hybrid (Hamiltonian) Monte Carlo over a batch of chains, one chain per row (AEVB App. D, E).

Used by Monte Carlo EM to sample p_theta(z|x) (App. E) and by the marginal-likelihood estimators
(App. D; AIS). The kernel is a `(state, info)` transition: `hmc_step(state, log_prob, step_size,
n_leapfrog, generator) -> (HMCState, HMCInfo)`, with unit-mass Gaussian momentum, leapfrog
integration with half steps at both ends, and a Metropolis correction per chain. Step sizes are per
chain; `adapt_step_size` moves them toward a target acceptance rate (App. E: 0.9) during adaptation,
and `run_chains` freezes them afterwards. Chains never loop in Python: every operation is batched.
`jitter` > 0 draws each transition's step size uniformly from step_size x [1 - jitter, 1 + jitter]
(independently of the state, so the kernel stays reversible): with a fixed step size, a trajectory
that happens to last half a period of a near-Gaussian target maps z to about -z and the chain only
flips between two points ([Neal2011] §5.4.2.2 recommends such randomisation).

[Neal2011] R. M. Neal, "MCMC using Hamiltonian dynamics", Handbook of MCMC, 2011.

`log_prob` maps positions `(C, J)` to log-densities `(C,)` (unnormalised is fine) and must be
differentiable in its argument; gradients are taken with autograd whatever the caller's grad mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LogProb = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class HMCState:
    z: torch.Tensor  # (C, J) positions
    log_prob: torch.Tensor  # (C,) log-density at z
    grad: torch.Tensor  # (C, J) its gradient


@dataclass
class HMCInfo:
    accept_prob: torch.Tensor  # (C,) min(1, exp(-change in energy))
    accepted: torch.Tensor  # (C,) bool


def value_and_grad(log_prob: LogProb, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log_prob(z) and d log_prob / dz, detached; parameters of log_prob get no gradient."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_prob(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.detach()


def init_state(z: torch.Tensor, log_prob: LogProb) -> HMCState:
    value, grad = value_and_grad(log_prob, z)
    return HMCState(z.detach(), value, grad)


def leapfrog(state: HMCState, momentum: torch.Tensor, log_prob: LogProb, step_size: torch.Tensor, n_leapfrog: int):
    """n_leapfrog steps of the leapfrog integrator for H(z, p) = -log_prob(z) + |p|^2 / 2.

    Half momentum step, then alternating full position and momentum steps, ending with a half
    momentum step; `step_size` is (C, 1). Returns the new state and momentum.
    """
    p = momentum + 0.5 * step_size * state.grad
    z = state.z
    for i in range(n_leapfrog):
        z = z + step_size * p
        value, grad = value_and_grad(log_prob, z)
        p = p + (step_size if i < n_leapfrog - 1 else 0.5 * step_size) * grad
    return HMCState(z, value, grad), p


def hmc_step(state: HMCState, log_prob: LogProb, step_size: torch.Tensor, n_leapfrog: int,
             generator: torch.Generator | None, jitter: float = 0.0) -> tuple[HMCState, HMCInfo]:
    """One HMC transition per chain: fresh momentum, leapfrog, Metropolis accept or reject."""
    step_size = step_size.reshape(-1, 1)
    if jitter > 0:  # a random step size per chain and transition ([Neal2011])
        u = torch.rand(step_size.shape, generator=generator, device=step_size.device, dtype=step_size.dtype)
        step_size = step_size * (1.0 + jitter * (2.0 * u - 1.0))
    p0 = torch.randn(state.z.shape, generator=generator, device=state.z.device, dtype=state.z.dtype)
    proposal, p1 = leapfrog(state, p0, log_prob, step_size, n_leapfrog)
    energy_change = (-proposal.log_prob + 0.5 * (p1**2).sum(-1)) - (-state.log_prob + 0.5 * (p0**2).sum(-1))
    energy_change = torch.nan_to_num(energy_change, nan=math.inf)  # a diverged trajectory is rejected
    accept_prob = torch.exp(-energy_change).clamp(max=1.0)
    u = torch.rand(accept_prob.shape, generator=generator, device=accept_prob.device, dtype=accept_prob.dtype)
    accepted = u < accept_prob
    keep = accepted[:, None]
    new = HMCState(
        torch.where(keep, proposal.z, state.z),
        torch.where(accepted, proposal.log_prob, state.log_prob),
        torch.where(keep, proposal.grad, state.grad),
    )
    return new, HMCInfo(accept_prob, accepted)


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, target_accept: float = 0.9,
                    rate: float = 1.0) -> torch.Tensor:
    """Per-chain multiplicative update: larger when accepting more often than the target, smaller
    when less (in the spirit of [K]'s multiply/divide rule, App. E); its fixed point is the target."""
    return step_size * torch.exp(rate * (accept_prob - target_accept))


@dataclass
class HMCResult:
    samples: torch.Tensor  # (S, C, J) draws after adaptation
    accept_rate: torch.Tensor  # (C,) mean acceptance probability over the kept transitions
    step_size: torch.Tensor  # (C,) the frozen step sizes
    state: HMCState  # last state, to continue the chains


def run_chains(state: HMCState, log_prob: LogProb, step_size: torch.Tensor, n_leapfrog: int,
               n_samples: int, n_adapt: int, generator: torch.Generator | None,
               target_accept: float = 0.9, thin: int = 1, jitter: float = 0.0) -> HMCResult:
    """`n_adapt` transitions that adapt the step sizes (draws discarded), then `n_samples` draws
    `thin` transitions apart with the step sizes frozen; `jitter` as in `hmc_step`."""
    step_size = step_size.expand(state.z.shape[0]).clone()
    for _ in range(n_adapt):
        state, info = hmc_step(state, log_prob, step_size, n_leapfrog, generator, jitter)
        step_size = adapt_step_size(step_size, info.accept_prob, target_accept)
    draws, accept_sum = [], torch.zeros_like(step_size)
    for _ in range(n_samples):
        for _ in range(thin):
            state, info = hmc_step(state, log_prob, step_size, n_leapfrog, generator, jitter)
            accept_sum += info.accept_prob
        draws.append(state.z)
    accept_rate = accept_sum / max(n_samples * thin, 1)
    samples = torch.stack(draws) if draws else state.z.new_zeros((0, *state.z.shape))
    return HMCResult(samples, accept_rate, step_size, state)
