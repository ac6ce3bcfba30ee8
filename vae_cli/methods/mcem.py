"""Monte Carlo EM with Hybrid Monte Carlo (AEVB App. E), the Fig. 3 baseline.

No encoder is used: the posterior p_theta(z|x) proportional to p(z) p_theta(x|z) of every training point
is sampled by its own persistent HMC chain (`hmc.py`), whose position and step size are the method's
own state (an N x N_z tensor and an N-vector, checkpointed). Per minibatch X^M:
- E-step: one HMC transition of `n_leapfrog` leapfrog steps (App. E: 10) continues the chains of the M
  points from where their last visit left them (chains start from the prior, PAPER.md §10.11); each
  point's step size then moves toward the target acceptance rate (App. E: 0.9), and each transition
  draws its step size from step x [1 - jitter, 1 + jitter] (not in the paper, see hmc.py);
- M-step: `n_weight_updates` (App. E: 5) updates of theta ascend sum_i log p_theta(x_i, z_i) + (M/N)
  log p(theta) at those samples, the weight prior of AEVB §5.
A minibatch counts M training samples evaluated, like an AEVB step (PAPER.md §10.11). The state grows
with N and a chain moves only when its point is visited: the method is not on-line, the paper's reason
it does not scale to all of MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..hmc import adapt_step_size, hmc_step, init_state
from ..models import VAE
from ..optim import Schedule, map_optimizer
from . import Capabilities, Minibatch, Update

NAME = "mcem"
CAPABILITIES = Capabilities(bound=False, compile=False, stack=False)


def log_joint_terms(model: VAE, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_joint = model.log_joint(x, z)  # (M,), log p_theta(x, z) at the E-step's samples
    return log_joint, log_joint


@dataclass
class MCEM:
    model: VAE
    n_train: int
    optimizers: dict[str, torch.optim.Optimizer]  # theta: the decoder; the encoder is never used
    schedules: dict[str, Schedule]
    skip_nonfinite: bool
    n_leapfrog: int
    n_weight_updates: int
    target_accept: float
    jitter: float
    z: torch.Tensor  # (N, J) the chains' positions, one per training point
    step_size: torch.Tensor  # (N,) their adapted HMC step sizes
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def updates(self) -> list[Update]:
        return [Update("theta", log_joint_terms, self.e_step, repeats=self.n_weight_updates)]

    def e_step(self, model: VAE, batch: Minibatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue the chains of the minibatch's points by one HMC transition on log p(z) + log p_theta(x|z)."""
        x, idx = batch

        def log_prob(z):
            return model.log_joint(x, z)

        state, info = hmc_step(init_state(self.z[idx], log_prob), log_prob, self.step_size[idx], self.n_leapfrog, generator, self.jitter)
        self.z[idx] = state.z
        self.step_size[idx] = adapt_step_size(self.step_size[idx], info.accept_prob, self.target_accept)
        return x, state.z

    def extra_state(self) -> dict:
        return {"z": self.z.clone(), "step_size": self.step_size.clone()}

    def load_extra_state(self, state: dict) -> None:
        for name, own in (("z", self.z), ("step_size", self.step_size)):
            if state[name].shape != own.shape:
                raise ValueError(f"MCEM {name} of shape {tuple(state[name].shape)} does not fit {tuple(own.shape)}")
            own.copy_(state[name])

    def bound(self, *args) -> None:
        raise TypeError("MCEM learns no q(z|x): it has no lower bound to evaluate")

    def evaluation_fields(self) -> dict:
        return {}


def build(cfg, model: VAE, n_train: int, device: torch.device, generator: torch.Generator) -> MCEM:
    """MCEM over the decoder's theta; the chains start from the prior, drawn from `generator`."""
    m = cfg.method
    like = next(model.decoder.parameters())
    z = torch.randn((n_train, model.latent_dim), generator=generator, device=device, dtype=like.dtype)  # z ~ p(z)
    optimizer, schedule = map_optimizer(cfg, model.decoder.named_parameters(), n_train, device)
    return MCEM(model, n_train, {"theta": optimizer}, {"theta": schedule}, cfg.trainer.on_nan == "skip_batch",
                m.n_leapfrog, m.n_weight_updates, m.target_accept, m.jitter, z,
                torch.full((n_train,), m.init_step_size, device=device, dtype=like.dtype))
