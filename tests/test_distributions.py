"""The paper's densities against direct formulas, torch.distributions and Monte Carlo."""

import math

import torch
from torch import distributions as td

from vae_cli.distributions import Bernoulli, DiagonalGaussian, standard_normal_log_prob


def test_gaussian_log_prob_matches_torch_and_the_formula():
    g = torch.Generator().manual_seed(0)
    mean, log_var, x = (torch.randn(4, 7, generator=g, dtype=torch.float64) for _ in range(3))
    ours = DiagonalGaussian(mean, log_var).log_prob(x)
    oracle = td.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(-1)
    direct = (-0.5 * math.log(2 * math.pi) - 0.5 * log_var - (x - mean) ** 2 / (2 * torch.exp(log_var))).sum(-1)
    torch.testing.assert_close(ours, oracle)
    torch.testing.assert_close(ours, direct)
    torch.testing.assert_close(standard_normal_log_prob(x), td.Normal(0.0, 1.0).log_prob(x).sum(-1))


def test_bernoulli_log_prob_matches_eq_11_and_is_stable_at_0_and_1():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 9, generator=g, dtype=torch.float64) * 3
    x = torch.rand(5, 9, generator=g, dtype=torch.float64)  # grey levels are allowed as targets
    y = torch.sigmoid(logits)
    direct = (x * torch.log(y) + (1 - x) * torch.log(1 - y)).sum(-1)  # eq. (11)
    torch.testing.assert_close(Bernoulli(logits).log_prob(x), direct)
    binary = torch.bernoulli(torch.full((5, 9), 0.5, dtype=torch.float64), generator=g)
    torch.testing.assert_close(Bernoulli(logits).log_prob(binary), td.Bernoulli(logits=logits).log_prob(binary).sum(-1))
    # y -> 1 and y -> 0: exact, finite values where clamped probabilities would give -inf or lose digits
    extreme = torch.tensor([[40.0, -40.0, 200.0, -200.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = -(math.log1p(math.exp(-40.0)) * 2 + 200.0 + 200.0)
    value = Bernoulli(extreme).log_prob(targets)
    assert torch.isfinite(value).all()
    assert abs(value.item() - expected) < 1e-9


def test_appendix_b_kl_equals_monte_carlo():
    """-KL = 1/2 sum(1 + log s^2 - mu^2 - s^2) against E_q[log q(z) - log p(z)] with 400k draws."""
    g = torch.Generator().manual_seed(2)
    q = DiagonalGaussian(torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64))
    z = q.rsample(400_000, g)
    terms = q.log_prob(z) - standard_normal_log_prob(z)  # (S, 3)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(terms.shape[0])
    closed = q.kl_to_standard_normal()
    assert ((closed - mc).abs() < 4 * se).all(), (closed, mc, se)
    torch.testing.assert_close(closed, td.kl_divergence(td.Normal(q.mean, q.std), td.Normal(0.0, 1.0)).sum(-1))


def test_reparameterized_gradient_of_a_quadratic_equals_the_analytic_gradient():
    """E_q[a z^2 + b z] = a(mu^2 + s^2) + b mu: d/dmu = 2 a mu + b, d/dlog s^2 = a s^2 (AEVB §2.4)."""
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    log_var = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    a, b = torch.rand(5, dtype=torch.float64, generator=g) + 0.5, torch.randn(5, dtype=torch.float64, generator=g)
    z = DiagonalGaussian(mean, log_var).rsample(200_000, g)  # (S, 5)
    grad_mean = torch.autograd.grad((a * z**2 + b * z).mean(0).sum(), (mean, log_var))  # through g_phi
    analytic_mean, analytic_log_var = 2 * a * mean.detach() + b, a * torch.exp(log_var.detach())
    # standard errors from the per-sample pathwise gradients f'(z) dz/dmu and f'(z) dz/dlog s^2
    with torch.no_grad():
        s2 = torch.exp(log_var)
        eps = (z - mean) / s2.sqrt()
        g_mu = 2 * a * z + b
        g_lv = (2 * a * z + b) * eps * 0.5 * s2.sqrt()
    se_mu, se_lv = g_mu.std(0) / math.sqrt(z.shape[0]), g_lv.std(0) / math.sqrt(z.shape[0])
    assert ((grad_mean[0] - analytic_mean).abs() < 4 * se_mu).all()
    assert ((grad_mean[1] - analytic_log_var).abs() < 4 * se_lv).all()


def test_rsample_has_the_requested_moments_and_shape():
    g = torch.Generator().manual_seed(4)
    q = DiagonalGaussian(torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64))
    z = q.rsample(100_000, g)
    assert z.shape == (100_000, 1, 2)
    torch.testing.assert_close(z.mean(0), q.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), q.std, atol=0.03, rtol=0)
