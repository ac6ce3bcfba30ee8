"""Encoders and decoders of App. C, their initialisation, the author's options (PAPER.md §12) and the
exact linear-Gaussian marginal."""

import math

import pytest
import torch
from torch import distributions as td

from helpers import build_vae, linear_gaussian_vae
from vae_cli.distributions import DiagonalGaussian, UniformMixture

F64 = torch.float64


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
    p = model.decoder(torch.randn(50, 2, generator=g, dtype=F64) * 3)
    assert (p.mean > 0).all() and (p.mean < 1).all()
    unsquashed = build_vae(10, 2, [8], "gaussian", 3.0, torch.Generator().manual_seed(1)).decoder(torch.randn(50, 2, generator=torch.Generator().manual_seed(2)) * 5)
    assert ((unsquashed.mean < 0) | (unsquashed.mean > 1)).any()


def test_decoder_min_log_var_clamps_only_when_set():
    g = torch.Generator().manual_seed(2)
    model = build_vae(10, 2, [8], "gaussian_sigmoid", 5.0, g, decoder_min_log_var=-1.0)
    z = torch.randn(100, 2, generator=g)
    assert model.decoder(z).log_var.min() >= -1.0
    unclamped = build_vae(10, 2, [8], "gaussian_sigmoid", 5.0, torch.Generator().manual_seed(2))
    assert unclamped.decoder(z).log_var.min() < -1.0  # the same weights would go below the floor


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
        model.decoder.log_var.copy_(torch.randn(5, generator=g, dtype=F64))
    x = torch.randn(8, 5, generator=g, dtype=F64)
    W, b = model.decoder.linear.weight, model.decoder.linear.bias
    cov = W @ W.T + torch.diag(torch.exp(model.decoder.log_var))
    oracle = td.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(model.decoder.exact_log_marginal(x).detach(), oracle.detach())


def test_log_joint_is_prior_plus_likelihood():
    g = torch.Generator().manual_seed(5)
    model = build_vae(6, 2, [4], "bernoulli", 0.5, g)
    x, z = torch.rand(3, 6, generator=g), torch.randn(3, 2, generator=g)
    log_prior = td.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_prior(z), log_prior)
    expected = log_prior + td.Bernoulli(logits=model.decoder(z).logits, validate_args=False).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), expected)


# -- the author's recognition model (PAPER.md §12.2) ----------------------------------------------

def _encoder_by_hand(model, x: torch.Tensor, scale: float):
    """mu = W4 h + b4 and log sigma^2 = scale (W5 h) + b5, h = tanh(W3 x + b3), in float64 from the
    module's own weights (the scale multiplies W5 h in the forward pass, not the stored weights)."""
    net, J = model.encoder.net, model.latent_dim
    W3, b3 = net.hidden[0].weight.detach().double(), net.hidden[0].bias.detach().double()
    W, b = net.out.weight.detach().double(), net.out.bias.detach().double()  # [W4; W5], [b4; b5]
    h = torch.tanh(x.double() @ W3.T + b3)
    return h, h @ W[:J].T + b[:J], scale * (h @ W[J:].T) + b[J:], h @ W[J:].T


def test_the_scaled_log_variance_head_is_point_one_times_w5_h_plus_b5_and_the_mean_head_is_unscaled():
    """The recognition model as trained (float32): log sigma^2 = 0.1 (W5 h) + b5, mu = W4 h + b4."""
    g = torch.Generator().manual_seed(6)
    J = 3
    model = build_vae(7, J, [5], "bernoulli", 1.0, g, encoder_log_var_scale=0.1)
    x = torch.rand(9, 7, generator=g)
    h, mean, log_var, w5_h = _encoder_by_hand(model, x, 0.1)
    assert (w5_h.abs() > 0.05).float().mean() > 0.5  # W5 h is large: a scale of 1 (or none on W5 h) fails by far
    q = model.encoder(x)
    torch.testing.assert_close(q.mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.log_var.double(), log_var, rtol=1e-6, atol=1e-6)
    # the same weights in eq. (12) as written give the unscaled head: only the scale differs
    plain = build_vae(7, J, [5], "bernoulli", 1.0, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))
    torch.testing.assert_close(plain.encoder(x).log_var.double(), w5_h + model.encoder.net.out.bias[J:].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain.encoder(x).mean, q.mean, rtol=0, atol=0)
    # the gradient reaches W5 scaled too: d(sum_i log sigma_i^2)/dW5 = 0.1 sum_i h_i in every row
    q.log_var.sum().backward()
    torch.testing.assert_close(model.encoder.net.out.weight.grad[J:].double(), 0.1 * h.sum(0).expand(J, -1), rtol=1e-5, atol=1e-6)
    assert torch.equal(model.encoder.net.out.weight.grad[:J], torch.zeros(J, 5))


def test_the_scaled_log_variance_head_is_exact_in_double_precision():
    """A float64 model (the math tests' precision) computes 0.1 (W5 h) + b5 to float64 rounding."""
    g = torch.Generator().manual_seed(6)
    model = build_vae(7, 3, [5], "bernoulli", 1.0, g, encoder_log_var_scale=0.1).double()
    x = torch.rand(9, 7, generator=g, dtype=F64)
    _, mean, log_var, _ = _encoder_by_hand(model, x, 0.1)
    q = model.encoder(x)
    torch.testing.assert_close(q.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_var, log_var, rtol=1e-12, atol=1e-12)


def test_a_zero_log_variance_head_starts_q_at_sigma_one_and_draws_everything_else_as_random_does():
    """encoder_log_var_init=zero: W5 = 0, b5 = 0, so log sigma^2 = 0 for every input; every other
    parameter equals the one `random` draws from the same seed, and the generator ends in the same state."""
    J = 4
    g_zero, g_random = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    zero = build_vae(12, J, [6], "gaussian", 0.3, g_zero, encoder_log_var_scale=0.1, encoder_log_var_init="zero")
    random = build_vae(12, J, [6], "gaussian", 0.3, g_random, encoder_log_var_scale=0.1, encoder_log_var_init="random")
    out = zero.encoder.net.out
    assert torch.equal(out.weight[J:], torch.zeros(J, 6)) and torch.equal(out.bias[J:], torch.zeros(J))
    assert (random.encoder.net.out.weight[J:] != 0).all()  # `random` does draw W5
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(8)) * 5  # inputs far apart
    q = zero.encoder(x)
    assert torch.equal(q.log_var, torch.zeros(30, J)) and torch.equal(q.std, torch.ones(30, J))
    assert q.mean.std(0).min() > 0  # the mean still depends on x
    for (name, a), b in zip(zero.named_parameters(), random.parameters()):
        if name == "encoder.net.out.weight" or name == "encoder.net.out.bias":
            assert torch.equal(a[:J], b[:J]), name  # the mean head W4, b4
        else:
            assert torch.equal(a, b), name
    assert torch.equal(g_zero.get_state(), g_random.get_state())


# -- the author's Frey Face decoder ([K14], PAPER.md §12.6) ---------------------------------------

def test_a_per_pixel_decoder_variance_is_a_learned_vector_that_ignores_z():
    g = torch.Generator().manual_seed(9)
    D = 6
    model = build_vae(D, 2, [5], "gaussian_sigmoid", 1.0, g, decoder_variance="per_pixel").double()
    decoder = model.decoder
    assert dict(decoder.named_parameters())["log_var"] is decoder.log_var and decoder.log_var.shape == (D,)
    assert torch.equal(decoder.log_var, torch.zeros(D, dtype=F64))  # sigma = 1 at the start
    assert decoder.net.out.out_features == D  # no log sigma^2 head on h
    with torch.no_grad():
        decoder.log_var.copy_(torch.randn(D, generator=g, dtype=F64))
    z = torch.randn(3, 20, 2, generator=g, dtype=F64) * 3
    p = decoder(z)
    assert torch.equal(p.log_var, decoder.log_var.expand(3, 20, D))
    assert p.mean.std((0, 1)).min() > 1e-3  # the mean does depend on z
    # learned: d/dlog sigma^2 of sum log N(x; mu, sigma^2) = sum 1/2 ((x - mu)^2 / sigma^2 - 1)
    x = torch.rand(20, D, generator=g, dtype=F64)
    p.log_prob(x).sum().backward()
    expected = 0.5 * ((x - p.mean.detach()) ** 2 * torch.exp(-decoder.log_var.detach()) - 1).sum((0, 1))
    torch.testing.assert_close(decoder.log_var.grad, expected, rtol=1e-12, atol=1e-12)


def _mixture(mean, log_var, logit):
    return UniformMixture(DiagonalGaussian(mean, log_var), logit)


def test_the_uniform_mixture_density_is_the_per_pixel_mixture_summed():
    """log prod_d [(1 - w_d) N(x_d; mu_d, s_d^2) + w_d 1{0 <= x_d <= 1}], w = sigmoid(logit), by hand."""
    g = torch.Generator().manual_seed(10)
    D = 7
    mean, log_var = torch.rand(5, D, generator=g, dtype=F64), torch.randn(5, D, generator=g, dtype=F64) - 2
    logit = torch.randn(D, generator=g, dtype=F64) * 2
    x = torch.rand(5, D, generator=g, dtype=F64) * 1.2 - 0.1  # some pixels outside [0, 1]
    w = 1 / (1 + torch.exp(-logit))
    inside = ((x >= 0) & (x <= 1)).to(F64)
    assert 0 < inside.mean() < 1
    normal = torch.exp(-((x - mean) ** 2) / (2 * torch.exp(log_var))) / torch.sqrt(2 * math.pi * torch.exp(log_var))
    by_hand = torch.log((1 - w) * normal + w * inside).sum(-1)
    torch.testing.assert_close(_mixture(mean, log_var, logit).log_prob(x), by_hand, rtol=1e-12, atol=1e-12)
    # and the model's decoder with the option is this density with its own logits, w = 1/2 at the start
    model = build_vae(D, 2, [4], "gaussian_sigmoid", 0.5, g, decoder_uniform_mixture=True).double()
    z = torch.randn(5, 2, generator=g, dtype=F64)
    p = model.decoder(z)
    assert isinstance(p, UniformMixture) and torch.equal(model.decoder.uniform_logit, torch.zeros(D, dtype=F64))
    plain = build_vae(D, 2, [4], "gaussian_sigmoid", 0.5, torch.Generator().manual_seed(10)).double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "decoder.uniform_logit"})
    gaussian = plain.decoder(z)
    y = x.clamp(0, 1)
    expected = torch.log(0.5 * torch.exp(td.Normal(gaussian.mean, gaussian.std).log_prob(y)) + 0.5).sum(-1)
    torch.testing.assert_close(p.log_prob(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mean,std,logit", [(0.9, 0.2, -1.0), (0.97, 0.05, 0.5), (0.05, 0.3, 2.0)])
def test_one_pixels_mixture_density_integrates_to_the_mass_it_puts_on_the_unit_interval(mean, std, logit):
    """The trapezoidal integral of the density over [0, 1] on a fine grid equals
    (1 - w) P(0 <= N(mu, s^2) <= 1) + w; the Gaussians here leave part of their mass outside [0, 1]."""
    grid = torch.linspace(0, 1, 200_001, dtype=F64)[:, None]  # (G, 1): one pixel
    mixture = _mixture(torch.tensor([mean], dtype=F64), torch.tensor([2 * math.log(std)], dtype=F64), torch.tensor([logit], dtype=F64))
    integral = torch.trapezoid(torch.exp(mixture.log_prob(grid)), grid[:, 0]).item()
    w = 1 / (1 + math.exp(-logit))
    normal = td.Normal(torch.tensor(mean, dtype=F64), torch.tensor(std, dtype=F64))
    inside = (normal.cdf(torch.tensor(1.0, dtype=F64)) - normal.cdf(torch.tensor(0.0, dtype=F64))).item()
    assert inside < 0.999  # so that a density normalised on [0, 1] alone, or a missing (1 - w), would fail
    assert integral == pytest.approx((1 - w) * inside + w, abs=1e-8)


def test_the_mixture_draws_the_uniform_component_with_frequency_w():
    """Gaussians far from [0, 1] (mean 5, sigma 0.01): a draw in [0, 1] came from the uniform. Its
    frequency per pixel equals w within 4 standard errors sqrt(w (1 - w) / n), and those draws are U(0, 1)."""
    n = 40_000
    logit = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=F64)
    w = torch.sigmoid(logit)
    mixture = _mixture(torch.full((n, 4), 5.0, dtype=F64), torch.full((n, 4), 2 * math.log(0.01), dtype=F64), logit)
    x = mixture.sample(torch.Generator().manual_seed(11))
    assert x.shape == (n, 4)
    uniform = (x >= 0) & (x <= 1)
    assert (uniform | ((x - 5).abs() < 0.1)).all()  # every draw is one of the two components
    freq = uniform.to(F64).mean(0)
    se = torch.sqrt(w * (1 - w) / n)
    assert ((freq - w).abs() < 4 * se).all(), (freq, w, se)
    for d in range(4):  # the uniform draws have the mean and variance of U(0, 1)
        u = x[uniform[:, d], d]
        assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / u.numel())
        assert abs(u.var().item() - 1 / 12) < 4 * math.sqrt(1 / 180 / u.numel())  # Var of (U - 1/2)^2 is 1/180
    # the mixture's mean is what its draws average to
    torch.testing.assert_close(x.mean(0), mixture.mean.mean(0), atol=(4 * x.std(0) / math.sqrt(n)).max().item(), rtol=0)
