"""Encoder q_phi(z|x), decoders p_theta(x|z) and the prior p(z): the variational auto-encoder of AEVB §3.

App. C gives the MLPs: tanh hidden layers, a Bernoulli output for binary data (eq. (11)) and a
diagonal Gaussian output with log sigma^2 for real data (eq. (12)); the Frey Face decoder squashes its
mean into (0, 1) (AEVB §5). The encoder is the Gaussian MLP with x and z swapped. Everything else in
the package talks to a model only through `encoder(x)`, `decoder(z)`, `log_prior(z)` and
`log_joint(x, z)`.

`LinearGaussianDecoder` (p(x|z) = N(Wz + b, diag(sigma^2))) is the one decoder whose marginal
likelihood is exact, N(x; b, W W^T + diag(sigma^2)): the tests and `vae-eval` check estimators on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import LOG_2PI, Bernoulli, DiagonalGaussian, UniformMixture, standard_normal_log_prob


class MLP(nn.Module):
    """tanh hidden layers followed by one linear output layer (App. C); no hidden layer = linear."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        sizes = [in_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], out_dim)

    def features(self, v: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            v = torch.tanh(layer(v))  # h = tanh(W v + b), App. C
        return v

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(v))


class GaussianMLP(nn.Module):
    """Gaussian MLP, eq. (12): mu = mean_fn(W4 h + b4), log sigma^2 = s (W5 h) + b5.

    One output layer of width 2 * out_dim holds [W4; W5], so both heads cost a single matmul.
    `mean_fn` is the identity for the encoder and torch.sigmoid for the Frey Face decoder (AEVB §5).
    `log_var_scale` s is 1 in eq. (12) as written; the author's recognition model uses 0.1, with
    W5 and b5 starting at zero (PAPER.md §12.2, `init_parameters`). `per_pixel_variance` replaces
    the log sigma^2 head by one learned constant per output dimension, independent of the input
    ([K14]'s Frey decoder, PAPER.md §12.6); `min_log_var`, when set, clamps log sigma^2 from below
    (PAPER.md §10.9); `uniform_mixture` mixes each dimension's density with U(0, 1) (PAPER.md §12.6).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        mean_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        min_log_var: float | None = None,
        log_var_scale: float = 1.0,
        per_pixel_variance: bool = False,
        uniform_mixture: bool = False,
    ):
        super().__init__()
        self.net = MLP(in_dim, hidden, out_dim if per_pixel_variance else 2 * out_dim)
        self.log_var_scale = log_var_scale
        self.log_var = nn.Parameter(torch.zeros(out_dim)) if per_pixel_variance else None  # starts at sigma = 1
        self.uniform_logit = nn.Parameter(torch.zeros(out_dim)) if uniform_mixture else None  # weight 1/2 at the start
        self.mean_fn = mean_fn
        self.min_log_var = min_log_var

    def forward(self, v: torch.Tensor) -> DiagonalGaussian | UniformMixture:
        if self.log_var is None and self.log_var_scale != 1.0:  # [W4; s W5] h + [b4; b5]
            W, J = self.net.out.weight, self.net.out.weight.shape[0] // 2
            mean, log_var = F.linear(self.net.features(v), torch.cat([W[:J], self.log_var_scale * W[J:]]), self.net.out.bias).chunk(2, dim=-1)
        elif self.log_var is None:
            mean, log_var = self.net(v).chunk(2, dim=-1)
        else:
            mean = self.net(v)
            log_var = self.log_var.expand_as(mean)
        if self.mean_fn is not None:
            mean = self.mean_fn(mean)
        if self.min_log_var is not None:
            log_var = log_var.clamp(min=self.min_log_var)
        gaussian = DiagonalGaussian(mean, log_var)
        return gaussian if self.uniform_logit is None else UniformMixture(gaussian, self.uniform_logit)


class BernoulliMLP(nn.Module):
    """Bernoulli MLP decoder, eq. (11): y = sigmoid(W2 tanh(W1 z + b1) + b2), kept as logits."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        self.net = MLP(in_dim, hidden, out_dim)

    def forward(self, z: torch.Tensor) -> Bernoulli:
        return Bernoulli(self.net(z))


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(x; W z + b, diag(exp(log_var))) with a learned, z-independent noise vector."""

    def __init__(self, latent_dim: int, data_dim: int):
        super().__init__()
        self.linear = nn.Linear(latent_dim, data_dim)
        self.log_var = nn.Parameter(torch.zeros(data_dim))

    def forward(self, z: torch.Tensor) -> DiagonalGaussian:
        mean = self.linear(z)
        return DiagonalGaussian(mean, self.log_var.expand_as(mean))

    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(x; b, W W^T + diag(sigma^2)) for z ~ N(0, I), one value per row of x."""
        W, b = self.linear.weight, self.linear.bias  # (D, J), (D,)
        cov = W @ W.T + torch.diag(torch.exp(self.log_var))
        chol = torch.linalg.cholesky(cov.double())
        r = (x.double() - b.double()).T  # (D, M)
        solved = torch.linalg.solve_triangular(chol, r, upper=False)
        log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
        return (-0.5 * (solved**2).sum(0) - 0.5 * log_det - 0.5 * x.shape[-1] * LOG_2PI).to(x.dtype)


class VAE(nn.Module):
    """The generative model p(z) p_theta(x|z) with its recognition model q_phi(z|x) (AEVB Fig. 1)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, data_dim: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.data_dim = data_dim

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log N(z; 0, I) (AEVB §3)."""
        return standard_normal_log_prob(z)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x, z) = log p(z) + log p_theta(x|z); z may carry leading sample axes."""
        return self.log_prior(z) + self.decoder(z).log_prob(x)


DECODERS = ("bernoulli", "gaussian", "gaussian_sigmoid", "linear_gaussian")


DECODER_VARIANCES = ("data_dependent", "per_pixel")


def build_decoder(
    kind: str, latent_dim: int, hidden: Sequence[int], data_dim: int, min_log_var: float | None,
    variance: str = "data_dependent", uniform_mixture: bool = False,
) -> nn.Module:
    """The decoder named by `model.decoder`; a Gaussian one's log sigma^2 as `model.decoder_variance` says."""
    gaussian = {"min_log_var": min_log_var, "per_pixel_variance": variance == "per_pixel", "uniform_mixture": uniform_mixture}
    if kind == "bernoulli":
        return BernoulliMLP(latent_dim, hidden, data_dim)
    if kind == "gaussian":
        return GaussianMLP(latent_dim, hidden, data_dim, **gaussian)
    if kind == "gaussian_sigmoid":
        return GaussianMLP(latent_dim, hidden, data_dim, torch.sigmoid, **gaussian)
    if kind == "linear_gaussian":
        return LinearGaussianDecoder(latent_dim, data_dim)
    raise ValueError(f"unknown decoder {kind}; choose one of {', '.join(DECODERS)}")


def init_parameters(model: nn.Module, std: float, generator: torch.Generator, zero_encoder_log_var: bool = False) -> None:
    """Every weight and bias ~ N(0, std^2); the paper's "N(0, 0.01)" read as std 0.01 (PAPER.md §6).

    Learned noise vectors (`log_var`) start at log sigma^2 = 0 and mixture logits at weight 1/2.
    `zero_encoder_log_var`: the encoder's log sigma^2 head W5, b5 starts at zero, so q(z|x) starts
    at sigma = 1, as the author's recognition model (PAPER.md §12.2); drawn after every other
    parameter's draw, so the random stream is the same either way.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("log_var", "uniform_logit")):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
        if zero_encoder_log_var:
            out = model.encoder.net.out
            out.weight[model.latent_dim :].zero_()  # rows of W5 in [W4; W5]
            out.bias[model.latent_dim :].zero_()


def build_vae(data_dim: int, spec, generator: torch.Generator) -> VAE:
    """The VAE a `model` config describes (`config.ModelConfig`, or any object with its fields), its
    parameters drawn from `generator`. Encoder and decoder have the same hidden sizes, as in the
    paper's experiments (PAPER.md §5)."""
    hidden = list(spec.hidden)
    encoder = GaussianMLP(data_dim, hidden, spec.latent_dim, log_var_scale=spec.encoder_log_var_scale)
    decoder = build_decoder(spec.decoder, spec.latent_dim, hidden, data_dim, spec.decoder_min_log_var,
                            spec.decoder_variance, spec.decoder_uniform_mixture)
    model = VAE(encoder, decoder, spec.latent_dim, data_dim)
    init_parameters(model, spec.init_std, generator, zero_encoder_log_var=spec.encoder_log_var_init == "zero")
    return model
