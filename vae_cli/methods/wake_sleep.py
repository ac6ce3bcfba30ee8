"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the paper's baseline (AEVB §4, Figs. 2-3).

The same encoder q_phi(z|x) and decoder p_theta(x|z) as AEVB, the same minibatch, Adagrad and weight
prior (PAPER.md §9); only the updates differ. Each step runs, in this order:
- wake (theta only): z ~ q_phi(z|x) for the real x, no gradient to phi; ascend
  sum_i [log p_theta(x_i|z_i) + log p(z_i)] + (M/N) log p(theta);
- sleep (phi only): M fantasies z ~ p(z), x ~ p_theta(x|z) drawn from the decoder *after* the wake
  update (binary draws for a Bernoulli decoder, Gaussian draws for a Gaussian one); ascend
  sum_i log q_phi(z_i|x_i) + (M/N) log p(phi).
The two objectives together ascend no bound on log p(x) (AEVB §4); the bound the loop evaluates is
the ordinary ELBO of the pair (q, p), with the same estimator as AEVB's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..estimators import noise
from ..models import VAE
from ..optim import Schedule, map_optimizer
from . import Capabilities, Defaults, Minibatch, Update

NAME = "wake_sleep"
CAPABILITIES = Capabilities(bound=True, compile=True, stack=True)


def wake_draw(model: VAE, batch: Minibatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.x, noise(model, batch.x, 1, generator)  # eps of z = g_phi(eps, x) ~ q(z|x), (1, M, J)


def wake_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_theta(x, z) at z = g_phi(eps, x), held fixed (no gradient reaches phi), and the
    single-sample ELBO log p(x, z) - log q(z|x) to show."""
    with torch.no_grad():
        q = model.encoder(x)
        z = q.reparameterize(eps)[0]  # (M, J)
        log_q = q.log_prob(z)
    log_joint = model.log_joint(x, z)  # (M,)
    return log_joint, log_joint - log_q


def sleep_draw(model: VAE, batch: Minibatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """M fantasies (x, z): z ~ p(z) = N(0, I), then x ~ p_theta(x|z)."""
    like = batch.x
    with torch.no_grad():
        z = torch.randn((like.shape[0], model.latent_dim), generator=generator, device=like.device, dtype=like.dtype)
        return model.decoder(z).sample(generator), z


def sleep_terms(model: VAE, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_q = model.encoder(x).log_prob(z)  # (M,), maximum likelihood of q on the fantasies
    return log_q, log_q


@dataclass
class WakeSleep(Defaults):
    model: VAE
    n_train: int
    optimizers: dict[str, torch.optim.Optimizer]  # wake: theta (the decoder), sleep: phi (the encoder)
    schedules: dict[str, Schedule]
    skip_nonfinite: bool
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def updates(self) -> list[Update]:
        return [Update("wake", wake_terms, wake_draw), Update("sleep", sleep_terms, sleep_draw)]


def build(cfg, model: VAE, n_train: int, device: torch.device, generator: torch.Generator) -> WakeSleep:
    """One optimizer per phase, both of the `optimizer` group (PAPER.md §9)."""
    wake = map_optimizer(cfg, model.decoder.named_parameters(), n_train, device)
    sleep = map_optimizer(cfg, model.encoder.named_parameters(), n_train, device)
    return WakeSleep(model, n_train, {"wake": wake[0], "sleep": sleep[0]}, {"wake": wake[1], "sleep": sleep[1]},
                     cfg.trainer.on_nan == "skip_batch")
