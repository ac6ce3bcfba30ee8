"""Bidirectional Monte Carlo (`likelihood/bdmc.py`) on a linear-Gaussian model, whose log p(x) is exact.

On points simulated from the model, forward AIS must stay below the exact log p(x) and reverse AIS from
the exact z above it, within standard errors over points (fixed seeds), and the gap must shrink as the
number of intermediate distributions grows. A reverse chain started from a wrong z, or run along the
forward schedule, breaks the upper bound: the check that guards the real one must catch both.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import linear_gaussian_vae
from vae_cli.hmc import HMCInfo, leapfrog
from vae_cli.likelihood import ais
from vae_cli.likelihood.ais import AISSettings, tuned_schedule
from vae_cli.likelihood.bdmc import BDMCSettings, sandwich, simulate

SETTINGS = BDMCSettings(n_chains=2)


@pytest.fixture(scope="module")
def simulated():
    model, g = linear_gaussian_vae(20, 4, seed=1, noise_var=0.3)
    model.requires_grad_(False)
    x, z = simulate(model, 150, g)
    return model, x, z, model.decoder.exact_log_marginal(x)


def bounds_hold(lower: torch.Tensor, upper: torch.Tensor, exact: torch.Tensor) -> bool:
    """lower <= exact <= upper on average over the points, within 3 standard errors each."""
    se = lambda d: d.std().item() / math.sqrt(d.numel())  # noqa: E731
    below, above = lower - exact, upper - exact
    return below.mean().item() <= 3 * se(below) and above.mean().item() >= -3 * se(above)


def test_the_sandwich_brackets_the_exact_log_likelihood_and_closes_with_more_steps(simulated):
    model, x, z, exact = simulated
    gaps = []
    for n_steps in (20, 300):
        s = sandwich(model, x, z, n_steps, SETTINGS, torch.Generator().manual_seed(n_steps))
        assert bounds_hold(s.lower, s.upper, exact), n_steps
        gaps.append(s.gap.mean().item())
    assert gaps[0] > 0 and gaps[1] > 0
    assert gaps[1] < gaps[0] / 3, gaps


def reverse_upper(model, x, z0, n_steps: int, generator: torch.Generator) -> torch.Tensor:
    """-log w' of one reverse chain per point started at z0, with the step sizes tuned as `sandwich` tunes them."""
    settings = AISSettings(n_steps, 1, SETTINGS.n_leapfrog)
    betas, tuned = tuned_schedule(model, x, settings, generator)
    log_w, _, _ = ais.anneal(model, x, betas.flip(0), tuned.flip(0), settings, generator, adapt=False, z0=z0)
    return -log_w


def without_metropolis(state, log_prob, step_size, n_leapfrog, generator, jitter=0.0):
    """An HMC transition that accepts every leapfrog proposal: it no longer leaves f_t invariant."""
    momentum = torch.randn(state.z.shape, generator=generator, dtype=state.z.dtype)
    proposal, _ = leapfrog(state, momentum, log_prob, step_size.reshape(-1, 1), n_leapfrog)
    return proposal, HMCInfo(torch.ones_like(proposal.log_prob), torch.ones_like(proposal.log_prob, dtype=torch.bool))


@pytest.mark.parametrize("broken", ["wrong z", "no Metropolis correction"])
def test_a_reverse_chain_from_a_wrong_z_or_without_its_metropolis_correction_breaks_the_upper_bound(simulated, monkeypatch, broken):
    model, x, z, exact = simulated
    right = reverse_upper(model, x, z, 30, torch.Generator().manual_seed(7))
    assert bounds_hold(exact - 1e3, right, exact)  # the real chain: an upper bound
    g = torch.Generator().manual_seed(7)
    if broken == "wrong z":
        wrong = reverse_upper(model, x, torch.randn(z.shape, generator=g, dtype=z.dtype), 30, g)  # a prior draw, not from p(z|x)
    else:  # the step sizes tuned with the true kernel, as `sandwich` tunes them; then the broken kernel runs backwards
        settings = AISSettings(30, 1, SETTINGS.n_leapfrog)
        betas, tuned = tuned_schedule(model, x, settings, g)
        monkeypatch.setattr(ais, "hmc_step", without_metropolis)
        log_w, _, _ = ais.anneal(model, x, betas.flip(0), tuned.flip(0), settings, g, adapt=False, z0=z)
        wrong = -log_w
    error = (right - exact).std().item() / math.sqrt(exact.numel())  # the real chain's standard error
    assert (wrong - exact).mean().item() < -3 * error  # falls below log p(x): no longer an upper bound
