"""Small models with known answers, shared by the math tests."""

from __future__ import annotations

import torch

from vae_cli.models import build_vae


def linear_gaussian_vae(data_dim: int, latent_dim: int, seed: int, noise_var: float = 0.5):
    """A linear-Gaussian model (double precision) with random W, b and isotropic noise, and a
    linear encoder; returns (model, generator)."""
    g = torch.Generator().manual_seed(seed)
    model = build_vae(data_dim, latent_dim, [], "linear_gaussian", 0.01, g).double()
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64))
        model.decoder.linear.bias.copy_(torch.randn(data_dim, generator=g, dtype=torch.float64))
        model.decoder.log_var.fill_(torch.log(torch.tensor(noise_var)).item())
    return model, g


def set_exact_posterior_encoder(model) -> None:
    """Make the linear encoder output the exact Gaussian posterior p(z|x) of a linear-Gaussian model
    whose W has orthogonal columns and whose noise is isotropic (then the posterior is diagonal)."""
    W, b = model.decoder.linear.weight.double(), model.decoder.linear.bias.double()
    s2 = torch.exp(model.decoder.log_var[0]).double()
    posterior_var = 1.0 / (1.0 + (W**2).sum(0) / s2)  # diag of (I + W^T W / s^2)^-1
    gain = posterior_var[:, None] * W.T / s2  # mean = gain (x - b)
    out = model.encoder.net.out
    J = W.shape[1]
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:J] = gain
        out.bias[:J] = -gain @ b
        out.bias[J:] = torch.log(posterior_var)


def orthogonal_columns(model, seed: int) -> None:
    """Replace W by a matrix with orthogonal columns of different lengths."""
    D, J = model.decoder.linear.weight.shape
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, J, generator=g, dtype=torch.float64))
    with torch.no_grad():
        model.decoder.linear.weight.copy_(Q * torch.linspace(0.5, 2.0, J, dtype=torch.float64))
