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
With `trainer.compile=true` each phase's update is one compiled graph (`compiled_update.py`); the
draws stay outside them, in the eager order (the wake phase's z, then the fantasies from the updated
decoder), so the random stream is the eager one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import generators
from .compiled_update import build_update
from .estimators import noise
from .generators import Generator
from .models import VAE
from .optimizers import map_optimizer


@dataclass
class WakeSleep:
    model: VAE
    wake_optimizer: torch.optim.Optimizer  # over theta, the decoder, with p(theta) as weight decay
    sleep_optimizer: torch.optim.Optimizer  # over phi, the encoder, with p(phi) as weight decay
    n_train: int  # N
    wake_update: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # on `wake_terms`, eager or compiled (trainer.compile)
    sleep_update: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # on `sleep_terms`
    nonfinite_gradient: torch.Tensor | None = None  # the compiled phases' guard flags for the last step, (2,)
    wake_flag: torch.Tensor | None = None  # the compiled wake update's flag, until the sleep phase's joins it
    has_encoder: ClassVar[bool] = True  # q(z|x) is a proper recognition model: its bound is evaluated

    def wake(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One gradient step on theta for log p_theta(x, z), z ~ q_phi(z|x) held fixed.

        Returns the single-sample ELBO log p(x, z) - log q(z|x) of each datapoint (before the step)."""
        shown, self.wake_flag = self.wake_update(x, noise(self.model, x, 1, generator))  # eps: q.sample's draw
        return shown

    def sleep(self, batch_size: int, generator: Generator) -> torch.Tensor:
        """One gradient step on phi for log q_phi(z|x) on fantasies (z, x) ~ p(z) p_theta(x|z).

        Returns log q(z|x) of each fantasy (before the step); M of them for each model of a stack."""
        like = next(self.model.decoder.parameters())  # device and dtype of the fantasies
        models = (self.model.n_models,) if self.model.model_axes else ()  # a stack's model axis
        with torch.no_grad():
            z = generators.randn((*models, batch_size, self.model.latent_dim), generator, 0, like.device, like.dtype)
            x = self.model.decoder(z).sample(generator)  # (M, D), or (K, M, D)
        shown, found = self.sleep_update(x, z)
        if found is not None:  # compiled: both phases' flags, in the guard's order (wake, sleep)
            self.nonfinite_gradient = torch.stack([self.wake_flag, found])
        return shown

    def step(self, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        bounds = self.wake(x, generator)
        self.sleep(x.shape[-2], generator)  # the sleep phase sees theta after the wake update
        return bounds

    def state_dict(self) -> dict:
        return {"wake_optimizer": self.wake_optimizer.state_dict(), "sleep_optimizer": self.sleep_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.wake_optimizer.load_state_dict(state["wake_optimizer"])
        self.sleep_optimizer.load_state_dict(state["sleep_optimizer"])


def wake_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The wake phase's terms log p_theta(x, z) at z = g_phi(eps, x), held fixed (no gradient reaches
    phi), and the single-sample ELBO log p(x, z) - log q(z|x) to show."""
    with torch.no_grad():
        q = model.encoder(x)
        z = q.reparameterize(eps)[0]  # (M, J): eps is (1, M, J)
        log_q = q.log_prob(z)
    log_joint = model.log_joint(x, z)  # (M,)
    return log_joint, log_joint - log_q


def sleep_terms(model: VAE, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sleep phase's terms log q_phi(z|x) on the fantasies (z, x), also what it shows."""
    log_q = model.encoder(x).log_prob(z)  # (M,)
    return log_q, log_q


def build(cfg, model: VAE, n_train: int, device: torch.device) -> WakeSleep:
    """Wake-sleep with one optimizer per phase, both of the `optimizer` group (PAPER.md §9);
    `trainer.compile` compiles each phase's update."""
    wake = map_optimizer(cfg, model.decoder.named_parameters(), n_train, device, model.model_axes)
    sleep = map_optimizer(cfg, model.encoder.named_parameters(), n_train, device, model.model_axes)
    return WakeSleep(
        model=model,
        wake_optimizer=wake,
        sleep_optimizer=sleep,
        n_train=n_train,
        wake_update=build_update(cfg, model, wake, wake_terms, n_train),
        sleep_update=build_update(cfg, model, sleep, sleep_terms, n_train),
    )
