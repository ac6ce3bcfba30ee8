"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the paper's baseline (AEVB §4, Fig. 2-3).

The same encoder q_phi(z|x) and decoder p_theta(x|z) as AEVB, the same minibatch, Adagrad and weight
prior (PAPER.md §9); only the updates differ. Each minibatch runs, in this order:
- wake phase (theta only): z ~ q_phi(z|x) for the real x, no gradient to phi; ascend
  sum_i [log p_theta(x_i|z_i) + log p(z_i)] + (M/N) log p(theta);
- sleep phase (phi only): M fantasies z ~ p(z), x ~ p_theta(x|z) drawn from the decoder *after* the
  wake update (binary draws for a Bernoulli decoder, Gaussian draws for a Gaussian one); ascend
  sum_i log q_phi(z_i|x_i) + (M/N) log p(phi).
The two objectives together do not ascend a bound on log p(x) (AEVB §4); the bound that the training
loop evaluates is the ordinary ELBO of the pair (q, p), with the same estimator as AEVB's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import generators
from .estimators import map_objective
from .generators import Generator
from .models import VAE
from .optimizers import map_optimizer


@dataclass
class WakeSleep:
    model: VAE
    wake_optimizer: torch.optim.Optimizer  # over theta, the decoder, with p(theta) as weight decay
    sleep_optimizer: torch.optim.Optimizer  # over phi, the encoder, with p(phi) as weight decay
    n_train: int  # N
    has_encoder: ClassVar[bool] = True  # q(z|x) is a proper recognition model: its bound is evaluated

    def wake(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One gradient step on theta for log p_theta(x, z), z ~ q_phi(z|x) held fixed.

        Returns the single-sample ELBO log p(x, z) - log q(z|x) of each datapoint (before the step)."""
        with torch.no_grad():
            q = self.model.encoder(x)
            z = q.sample(generator)  # (M, J)
            log_q = q.log_prob(z)
        log_joint = self.model.log_joint(x, z)  # (M,)
        objective = map_objective(log_joint, self.n_train)
        self.wake_optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        self.wake_optimizer.step()
        return (log_joint - log_q).detach()

    def sleep(self, batch_size: int, generator: Generator) -> torch.Tensor:
        """One gradient step on phi for log q_phi(z|x) on fantasies (z, x) ~ p(z) p_theta(x|z).

        Returns log q(z|x) of each fantasy (before the step); M of them for each model of a stack."""
        like = next(self.model.decoder.parameters())  # device and dtype of the fantasies
        models = (self.model.n_models,) if self.model.model_axes else ()  # a stack's model axis
        with torch.no_grad():
            z = generators.randn((*models, batch_size, self.model.latent_dim), generator, 0, like.device, like.dtype)
            x = self.model.decoder(z).sample(generator)  # (M, D), or (K, M, D)
        log_q = self.model.encoder(x).log_prob(z)  # (M,)
        objective = map_objective(log_q, self.n_train)
        self.sleep_optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        self.sleep_optimizer.step()
        return log_q.detach()

    def step(self, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        bounds = self.wake(x, generator)
        self.sleep(x.shape[-2], generator)  # the sleep phase sees theta after the wake update
        return bounds

    def state_dict(self) -> dict:
        return {"wake_optimizer": self.wake_optimizer.state_dict(), "sleep_optimizer": self.sleep_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.wake_optimizer.load_state_dict(state["wake_optimizer"])
        self.sleep_optimizer.load_state_dict(state["sleep_optimizer"])


def build(cfg, model: VAE, n_train: int, device: torch.device) -> WakeSleep:
    """Wake-sleep with one optimizer per phase, both of the `optimizer` group (PAPER.md §9)."""
    return WakeSleep(
        model=model,
        wake_optimizer=map_optimizer(cfg, model.decoder.named_parameters(), n_train, device, model.model_axes),
        sleep_optimizer=map_optimizer(cfg, model.encoder.named_parameters(), n_train, device, model.model_axes),
        n_train=n_train,
    )
