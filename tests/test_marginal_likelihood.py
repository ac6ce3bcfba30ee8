"""Marginal-likelihood estimators against the exact log p(x) of a linear-Gaussian model."""

import math

import torch

from helpers import linear_gaussian_vae
from vae_cli.marginal_likelihood import AppendixDSettings, appendix_d, fit_gaussian


def _replicated(estimator, model, x, settings, g, reps=200):
    """`reps` independent estimates per datapoint in one batched call: mean and standard error."""
    est = estimator(model, x.repeat(reps, 1), settings, g).view(reps, x.shape[0])
    return est.mean(0), est.std(0) / math.sqrt(reps)


def test_appendix_d_recovers_the_exact_log_likelihood_for_nz_2():
    model, g = linear_gaussian_vae(data_dim=8, latent_dim=2, seed=10, noise_var=0.5)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64) * 2
    exact = model.decoder.exact_log_marginal(x).detach()
    mean, se = _replicated(appendix_d, model, x, AppendixDSettings(), g)
    assert ((mean - exact).abs() < 4 * se + 1e-3).all(), (mean, exact, se)


def test_a_wrong_normaliser_in_q_is_detected():
    """q must be a normalised density: the same estimate with q off by a constant factor e^1 is
    off by 1 nat, far outside the tolerance above."""
    model, g = linear_gaussian_vae(data_dim=8, latent_dim=2, seed=11, noise_var=0.5)
    x = torch.randn(3, 8, generator=g, dtype=torch.float64)
    exact = model.decoder.exact_log_marginal(x).detach()
    import vae_cli.marginal_likelihood as ml

    original = ml.fit_gaussian
    try:
        ml.fit_gaussian = lambda *a, **k: (lambda z, f=original(*a, **k): f(z) + 1.0)
        mean, se = _replicated(appendix_d, model, x, AppendixDSettings(), g)
    finally:
        ml.fit_gaussian = original
    assert ((mean - exact).abs() > 4 * se).all()


def test_fit_gaussian_is_the_normal_density_of_the_draws():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(500, 3, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    log_q = fit_gaussian(draws)
    z = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    mean = draws.mean(0)
    cov = torch.stack([torch.cov(draws[:, m].T) for m in range(3)])
    oracle = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov + 1e-6 * torch.eye(2, dtype=torch.float64)).log_prob(z)
    torch.testing.assert_close(log_q(z), oracle)


class _TwoModes:
    """z ~ N(0, 1), x | z ~ N(z^2, 0.3^2): for x = 4, p(z|x) has two mirror modes at z = +-2, each
    of half the mass, with no path between them an HMC chain could take (p(x|0) ~ e^-89)."""

    latent_dim = 1

    def log_joint(self, x, z):
        from vae_cli.distributions import DiagonalGaussian, standard_normal_log_prob

        return standard_normal_log_prob(z) + DiagonalGaussian(z**2, torch.full_like(z, math.log(0.09))).log_prob(x)


def test_appendix_d_stays_in_one_mode_and_never_overshoots_on_a_two_mode_posterior():
    """Both chains of a point start together, so they sample the same mode: the estimate is
    log p(x, z in that mode) = log p(x) - log 2, never above log p(x). Chains started apart would
    fit q on one mode and evaluate it on the other, overshooting by hundreds of nats."""
    model = _TwoModes()
    x = torch.full((200, 1), 4.0, dtype=torch.float64)
    grid = torch.linspace(-6, 6, 400_001, dtype=torch.float64)[:, None, None]
    exact = (torch.logsumexp(model.log_joint(x[:1], grid), 0) + math.log(12 / 400_000)).item()  # quadrature
    est = appendix_d(model, x, AppendixDSettings(), torch.Generator().manual_seed(12))
    assert (est < exact + 0.2).all(), est.max()
    mean, se = est.mean().item(), est.std().item() / math.sqrt(est.numel())
    assert abs(mean - (exact - math.log(2))) < 4 * se + 0.02, (mean, exact - math.log(2), se)
