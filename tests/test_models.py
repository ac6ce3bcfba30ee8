"""Encoders and decoders of App. C, their initialisation, and the exact linear-Gaussian marginal."""

import math

import pytest
import torch
from torch import distributions as td

from helpers import linear_gaussian_vae
from vae_cli.models import VAE, build_vae


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian", "gaussian_sigmoid"])
def test_shapes_follow_the_sample_axis_first_convention(decoder):
    g = torch.Generator().manual_seed(0)
    model = build_vae(10, 3, [6, 5], decoder, 0.1, g)
    x = torch.rand(4, 10, generator=g)
    q = model.encoder(x)
    assert q.mean.shape == q.log_var.shape == (4, 3)
    z = q.rsample(7, g)  # (L, M, J)
    assert z.shape == (7, 4, 3)
    assert model.decoder(z).log_prob(x).shape == (7, 4)
    assert model.log_joint(x, z).shape == (7, 4)
    assert len(model.encoder.net.hidden) == 2


def test_frey_decoder_mean_is_squashed_into_the_unit_interval():
    g = torch.Generator().manual_seed(1)
    model = build_vae(10, 2, [8], "gaussian_sigmoid", 1.0, g).double()
    p = model.decoder(torch.randn(50, 2, generator=g, dtype=torch.float64) * 3)
    assert (p.mean > 0).all() and (p.mean < 1).all()
    unsquashed = build_vae(10, 2, [8], "gaussian", 3.0, torch.Generator().manual_seed(1)).decoder(torch.randn(50, 2, generator=torch.Generator().manual_seed(2)) * 5)
    assert ((unsquashed.mean < 0) | (unsquashed.mean > 1)).any()


def test_decoder_min_log_var_clamps_only_when_set():
    g = torch.Generator().manual_seed(2)
    model = build_vae(10, 2, [8], "gaussian_sigmoid", 5.0, g, decoder_min_log_var=-1.0)
    assert model.decoder(torch.randn(100, 2, generator=g)).log_var.min() >= -1.0


def test_initialisation_is_normal_with_the_configured_std():
    g = torch.Generator().manual_seed(3)
    model = build_vae(784, 20, [500], "bernoulli", 0.01, g)
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert abs(values.mean().item()) < 1e-4
    assert abs(values.std().item() - 0.01) < 1e-4
    same = build_vae(784, 20, [500], "bernoulli", 0.01, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_linear_gaussian_exact_marginal_matches_a_multivariate_normal():
    model, g = linear_gaussian_vae(data_dim=5, latent_dim=2, seed=4)
    with torch.no_grad():
        model.decoder.log_var.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    W, b = model.decoder.linear.weight, model.decoder.linear.bias
    cov = W @ W.T + torch.diag(torch.exp(model.decoder.log_var))
    oracle = td.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(model.decoder.exact_log_marginal(x).detach(), oracle.detach())


def test_log_joint_is_prior_plus_likelihood():
    g = torch.Generator().manual_seed(5)
    model = build_vae(6, 2, [4], "bernoulli", 0.5, g)
    assert isinstance(model, VAE)
    x, z = torch.rand(3, 6, generator=g), torch.randn(3, 2, generator=g)
    expected = td.Normal(0.0, 1.0).log_prob(z).sum(-1) + td.Bernoulli(logits=model.decoder(z).logits, validate_args=False).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), expected)
    assert math.isfinite(model.log_prior(z).sum().item())
