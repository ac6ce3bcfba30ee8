"""HMC: the leapfrog integrator's invariants, the invariance of known targets, the adaptation."""

import math

import pytest
import torch

from helpers import linear_gaussian_vae
from vae_cli import hmc
from vae_cli.hmc import HMCState, adapt_step_size, hmc_step, init_state, leapfrog, run_chains

COV = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=torch.float64) * torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
PRECISION = torch.linalg.inv(COV)


def correlated_gaussian(z):
    d = z - MEAN
    return -0.5 * ((d @ PRECISION) * d).sum(-1)


def test_leapfrog_is_reversible_and_conserves_energy_to_second_order():
    g = torch.Generator().manual_seed(0)
    state = init_state(torch.randn(50, 2, generator=g, dtype=torch.float64), correlated_gaussian)
    p0 = torch.randn(50, 2, generator=g, dtype=torch.float64)
    energy = lambda s, p: -s.log_prob + 0.5 * (p**2).sum(-1)  # noqa: E731
    errors = []
    for eps in (0.02, 0.01):
        step = torch.full((50, 1), eps, dtype=torch.float64)
        end, p1 = leapfrog(state, p0, correlated_gaussian, step, n_leapfrog=int(round(0.4 / eps)))
        back, p2 = leapfrog(end, -p1, correlated_gaussian, step, n_leapfrog=int(round(0.4 / eps)))
        torch.testing.assert_close(back.z, state.z, rtol=0, atol=1e-9)  # reversibility
        torch.testing.assert_close(-p2, p0, rtol=0, atol=1e-9)
        errors.append((energy(end, p1) - energy(state, p0)).abs().max().item())
    assert 3.5 < errors[0] / errors[1] < 4.5  # O(eps^2) global error: half the step, a quarter the error


def _moments_over_chains(draws):
    """Means and covariances with standard errors from independent chains: (S, C, J) draws."""
    chain_mean = draws.mean(0)  # (C, J)
    centred = draws - MEAN
    chain_second = (centred[..., :, None] * centred[..., None, :]).mean(0)  # (C, J, J)
    n = draws.shape[1]
    return (chain_mean.mean(0), chain_mean.std(0) / math.sqrt(n), chain_second.mean(0), chain_second.std(0) / math.sqrt(n))


@pytest.mark.parametrize("n_leapfrog,step", [(10, 0.35), (1, 0.9)])
def test_hmc_leaves_a_correlated_gaussian_invariant(n_leapfrog, step):
    """20,000 draws (1000 chains x 20) started at the target: mean and covariance within 4 SE.

    The step sizes are large enough that leapfrog alone is visibly biased, so a missing or wrong
    Metropolis correction, or a wrong sign in the momentum update, fails this test."""
    g = torch.Generator().manual_seed(1)
    chol = torch.linalg.cholesky(COV)
    z0 = MEAN + torch.randn(1000, 2, generator=g, dtype=torch.float64) @ chol.T
    result = run_chains(init_state(z0, correlated_gaussian), correlated_gaussian, torch.tensor(step, dtype=torch.float64),
                        n_leapfrog, n_samples=20, n_adapt=0, generator=g)
    mean, mean_se, second, second_se = _moments_over_chains(result.samples)
    assert ((mean - MEAN).abs() < 4 * mean_se).all(), (mean, mean_se)
    assert ((second - COV).abs() < 4 * second_se).all(), (second, second_se)
    assert 0.05 < result.accept_rate.mean() < 0.99  # the correction is really at work


def test_a_missing_metropolis_step_or_wrong_momentum_sign_is_detected(monkeypatch):
    """The invariance check above, run against two broken kernels, must reject them."""
    g = torch.Generator().manual_seed(2)
    chol = torch.linalg.cholesky(COV)
    z0 = MEAN + torch.randn(1000, 2, generator=g, dtype=torch.float64) @ chol.T

    def always_accept(state, log_prob, step_size, n_leapfrog, generator, jitter=0.0):
        p0 = torch.randn(state.z.shape, generator=generator, dtype=state.z.dtype)
        new, _ = leapfrog(state, p0, log_prob, step_size.reshape(-1, 1), n_leapfrog)
        return new, hmc.HMCInfo(torch.ones(state.z.shape[0], dtype=state.z.dtype), torch.ones(state.z.shape[0], dtype=torch.bool))

    original_leapfrog = hmc.leapfrog

    def wrong_sign(state, momentum, log_prob, step_size, n_leapfrog):
        flipped = HMCState(state.z, state.log_prob, -state.grad)
        return original_leapfrog(flipped, momentum, lambda z: -log_prob(z), step_size, n_leapfrog)

    for patch in ({"hmc_step": always_accept}, {"leapfrog": wrong_sign}):
        with monkeypatch.context() as m:
            for name, fn in patch.items():
                m.setattr(hmc, name, fn)
            result = hmc.run_chains(init_state(z0, correlated_gaussian), correlated_gaussian,
                                    torch.tensor(0.9, dtype=torch.float64), 1, n_samples=20, n_adapt=0, generator=g)
        mean, mean_se, second, second_se = _moments_over_chains(result.samples)
        assert ((mean - MEAN).abs() > 4 * mean_se).any() or ((second - COV).abs() > 4 * second_se).any()


def test_adaptation_reaches_the_target_acceptance_and_then_freezes():
    g = torch.Generator().manual_seed(3)
    z0 = MEAN + torch.randn(400, 2, generator=g, dtype=torch.float64)
    result = run_chains(init_state(z0, correlated_gaussian), correlated_gaussian, torch.tensor(2.0, dtype=torch.float64),
                        n_leapfrog=4, n_samples=200, n_adapt=300, generator=g, target_accept=0.9)
    assert abs(result.accept_rate.mean().item() - 0.9) < 0.05
    frozen = result.step_size.clone()
    again = run_chains(result.state, correlated_gaussian, frozen, n_leapfrog=4, n_samples=5, n_adapt=0, generator=g)
    assert torch.equal(again.step_size, frozen)
    assert torch.equal(adapt_step_size(frozen, torch.full_like(frozen, 0.9)), frozen)  # fixed point


def test_hmc_matches_the_exact_posterior_of_a_linear_gaussian_decoder():
    """p(z|x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1 for x = Wz + b + noise."""
    model, g = linear_gaussian_vae(data_dim=5, latent_dim=2, seed=4, noise_var=0.8)
    x = torch.randn(1, 5, generator=g, dtype=torch.float64)
    W, b = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    s2 = torch.exp(model.decoder.log_var.detach())
    S = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ (W / s2[:, None]))
    mu = S @ W.T @ ((x[0] - b) / s2)
    chains = 800
    target = lambda z: model.log_joint(x.expand(z.shape[0], -1), z)  # noqa: E731
    result = run_chains(init_state(torch.randn(chains, 2, generator=g, dtype=torch.float64), target), target,
                        torch.tensor(0.5, dtype=torch.float64), n_leapfrog=5, n_samples=25, n_adapt=100, generator=g)
    chain_mean = result.samples.mean(0)
    se = chain_mean.std(0) / math.sqrt(chains)
    assert ((chain_mean.mean(0) - mu).abs() < 4 * se).all()
    centred = result.samples - mu
    second = (centred[..., :, None] * centred[..., None, :]).mean(0)
    assert ((second.mean(0) - S).abs() < 4 * second.std(0) / math.sqrt(chains)).all()


def test_hmc_step_is_batched_and_seeded():
    state = init_state(torch.zeros(7, 3), lambda z: -0.5 * (z**2).sum(-1))
    a, _ = hmc_step(state, lambda z: -0.5 * (z**2).sum(-1), torch.full((7,), 0.3), 3, torch.Generator().manual_seed(5))
    b, _ = hmc_step(state, lambda z: -0.5 * (z**2).sum(-1), torch.full((7,), 0.3), 3, torch.Generator().manual_seed(5))
    assert a.z.shape == (7, 3) and torch.equal(a.z, b.z)


def test_per_chain_step_sizes_adapt_to_each_chains_scale():
    """Chains over N(0, s_c^2) with s_c from 0.1 to 10 each find their own step size (about
    proportional to s_c) and the target acceptance: the adaptation is per chain, not global."""
    g = torch.Generator().manual_seed(6)
    scales = torch.logspace(-1, 1, 9, dtype=torch.float64).repeat_interleave(50)  # (450,)
    target = lambda z: -0.5 * ((z / scales[:, None]) ** 2).sum(-1)  # noqa: E731
    z0 = torch.randn(450, 2, generator=g, dtype=torch.float64) * scales[:, None]
    result = run_chains(init_state(z0, target), target, torch.tensor(1.0, dtype=torch.float64), n_leapfrog=4,
                        n_samples=100, n_adapt=300, generator=g, target_accept=0.9)
    ratio = (result.step_size / scales).view(9, 50).median(1).values
    assert (ratio.max() / ratio.min()) < 1.5, ratio  # one global step size would give a 100x spread
    rate = result.accept_rate.view(9, 50).mean(1)
    assert ((rate - 0.9).abs() < 0.05).all(), rate


def test_step_size_jitter_breaks_periodic_trajectories_and_keeps_the_target():
    """On N(0, I) one leapfrog step of size e rotates phase space by theta, cos(theta) = 1 - e^2/2;
    with theta = pi/4, 4 steps are half a period: z -> -z exactly, accepted every time, so a chain
    without jitter only flips between two points (what App. D's chains did on a fresh model) and a
    Gaussian fitted to its draws is degenerate. With jitter each chain spreads in every direction
    and the draws keep the target's variance (within 4 SE over chains)."""
    g = torch.Generator().manual_seed(7)
    target = lambda z: -0.5 * (z**2).sum(-1)  # noqa: E731
    z0 = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    step = torch.tensor(math.sqrt(2 * (1 - math.cos(math.pi / 4))), dtype=torch.float64)

    def smallest_within_chain_variance(samples):  # (S, C, J) -> (C,)
        centred = samples - samples.mean(0)
        cov = torch.einsum("lmi,lmj->mij", centred, centred) / (samples.shape[0] - 1)
        return torch.linalg.eigvalsh(cov)[:, 0]

    fixed = run_chains(init_state(z0, target), target, step, 4, n_samples=20, n_adapt=0, generator=g)
    torch.testing.assert_close(fixed.samples[2], fixed.samples[0], atol=1e-6, rtol=0)  # stuck on {z, -z}
    assert smallest_within_chain_variance(fixed.samples).max() < 1e-9
    jittered = run_chains(init_state(z0, target), target, step, 4, n_samples=20, n_adapt=0, generator=g, jitter=0.2)
    assert smallest_within_chain_variance(jittered.samples).median() > 0.15  # about 0.26; 0 without jitter
    per_chain = (jittered.samples**2).mean(0)  # (C, J): second moment of each chain, 1 on average
    mean, se = per_chain.mean(0), per_chain.std(0) / math.sqrt(per_chain.shape[0])
    assert ((mean - 1.0).abs() < 4 * se).all(), (mean, se)


def test_jittered_hmc_leaves_a_correlated_gaussian_invariant():
    g = torch.Generator().manual_seed(8)
    chol = torch.linalg.cholesky(COV)
    z0 = MEAN + torch.randn(1000, 2, generator=g, dtype=torch.float64) @ chol.T
    result = run_chains(init_state(z0, correlated_gaussian), correlated_gaussian, torch.tensor(0.35, dtype=torch.float64),
                        10, n_samples=20, n_adapt=0, generator=g, jitter=0.3)
    mean, mean_se, second, second_se = _moments_over_chains(result.samples)
    assert ((mean - MEAN).abs() < 4 * mean_se).all(), (mean, mean_se)
    assert ((second - COV).abs() < 4 * second_se).all(), (second, second_se)
