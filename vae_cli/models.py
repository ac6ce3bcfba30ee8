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
from torch import nn

from .distributions import LOG_2PI, Bernoulli, DiagonalGaussian, standard_normal_log_prob


class MLP(nn.Module):
    """tanh hidden layers followed by one linear output layer (App. C); no hidden layer = linear."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        sizes = [in_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], out_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            v = torch.tanh(layer(v))  # h = tanh(W v + b), App. C
        return self.out(v)


class GaussianMLP(nn.Module):
    """Gaussian MLP, eq. (12): mu = mean_fn(W4 h + b4), log sigma^2 = W5 h + b5.

    One output layer of width 2 * out_dim holds [W4; W5], so both heads cost a single matmul.
    `mean_fn` is the identity for the encoder and torch.sigmoid for the Frey Face decoder (AEVB §5);
    `min_log_var`, when set, clamps log sigma^2 from below (PAPER.md §10.9; off by default).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        mean_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        min_log_var: float | None = None,
    ):
        super().__init__()
        self.net = MLP(in_dim, hidden, 2 * out_dim)
        self.mean_fn = mean_fn
        self.min_log_var = min_log_var

    def forward(self, v: torch.Tensor) -> DiagonalGaussian:
        mean, log_var = self.net(v).chunk(2, dim=-1)
        if self.mean_fn is not None:
            mean = self.mean_fn(mean)
        if self.min_log_var is not None:
            log_var = log_var.clamp(min=self.min_log_var)
        return DiagonalGaussian(mean, log_var)


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
        log_var = self.log_var if self.log_var.ndim == 1 else self.log_var.unsqueeze(-2)  # (D,), or (K, 1, D) in a stack
        return DiagonalGaussian(mean, log_var.expand_as(mean))

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

    n_models = 1  # models side by side; K in a stack (stacked.py)

    @property
    def model_axes(self) -> int:
        """Leading axes of every parameter that index models: 1 in a stack, else 0."""
        return int(self.n_models > 1)

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


def build_decoder(
    kind: str, latent_dim: int, hidden: Sequence[int], data_dim: int, min_log_var: float | None
) -> nn.Module:
    """The decoder named by `model.decoder`."""
    if kind == "bernoulli":
        return BernoulliMLP(latent_dim, hidden, data_dim)
    if kind == "gaussian":
        return GaussianMLP(latent_dim, hidden, data_dim, min_log_var=min_log_var)
    if kind == "gaussian_sigmoid":
        return GaussianMLP(latent_dim, hidden, data_dim, torch.sigmoid, min_log_var)
    if kind == "linear_gaussian":
        return LinearGaussianDecoder(latent_dim, data_dim)
    raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}")


def init_parameters(model: nn.Module, std: float, generator: torch.Generator) -> None:
    """Every weight and bias ~ N(0, std^2); the paper's "N(0, 0.01)" read as std 0.01 (PAPER.md §6).

    The linear-Gaussian decoder's noise vector starts at log sigma^2 = 0 (unit variance).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_var"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


def build_vae(
    data_dim: int,
    latent_dim: int,
    hidden: Sequence[int],
    decoder: str,
    init_std: float,
    generator: torch.Generator,
    decoder_min_log_var: float | None = None,
) -> VAE:
    """Encoder and decoder with the same hidden sizes, as in the paper's experiments (PAPER.md §5)."""
    encoder = GaussianMLP(data_dim, hidden, latent_dim)
    dec = build_decoder(decoder, latent_dim, hidden, data_dim, decoder_min_log_var)
    model = VAE(encoder, dec, latent_dim, data_dim)
    init_parameters(model, init_std, generator)
    return model
