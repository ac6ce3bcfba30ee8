"""Monte Carlo EM with Hybrid Monte Carlo (AEVB App. E), the Fig. 3 baseline.

No encoder is used: the posterior p_theta(z|x) proportional to p(z) p_theta(x|z) of every training
point is sampled by its own persistent HMC chain (`vae_cli/hmc.py`), whose position and step size are
per-datapoint state of the method (an N x N_z tensor and an N-vector, checkpointed with the
optimizer). Per minibatch X^M (rows `idx` of the training set):
- E-step: one HMC transition of `n_leapfrog` leapfrog steps (App. E: 10) continues the chains of the
  M points from where their last visit left them (chains start from the prior, PAPER.md §10.11);
  each point's step size then moves toward the target acceptance rate (App. E: 0.9); each
  transition draws its step size from step x [1 - jitter, 1 + jitter] (not in the paper, see hmc.py);
- M-step: `n_weight_updates` (App. E: 5) Adagrad updates of theta ascend
  sum_i log p_theta(x_i, z_i) + (M/N) log p(theta) at those samples, the weight prior of AEVB §5.
A minibatch counts M training samples evaluated, like one AEVB step (PAPER.md §10.11).
The state grows with N and a chain only moves when its point is visited, so the method is not
on-line and does not amortise inference: the paper's reason it does not scale to all of MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .estimators import map_objective
from .hmc import HMCInfo, HMCState, adapt_step_size, hmc_step, init_state
from .models import VAE
from .optimizers import map_optimizer


@dataclass
class MCEM:
    model: VAE
    optimizer: torch.optim.Optimizer  # over theta, the decoder; the encoder is never used
    n_train: int  # N
    n_leapfrog: int
    n_weight_updates: int
    target_accept: float
    jitter: float  # random step-size factor per transition, 1 +- jitter (vae_cli/hmc.py)
    z: torch.Tensor  # (N, J) the chains' positions, one per training point
    step_size: torch.Tensor  # (N,) the chains' adapted HMC step sizes
    has_encoder: ClassVar[bool] = False  # no q(z|x): evaluation logs log p(x) estimates, not a bound

    def e_step(self, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> tuple[HMCState, HMCInfo]:
        """Continue the chains of the points `idx` by one HMC transition on log p(z) + log p_theta(x|z)."""
        def log_prob(z):
            return self.model.log_joint(x, z)

        state, info = hmc_step(init_state(self.z[idx], log_prob), log_prob, self.step_size[idx], self.n_leapfrog, generator, self.jitter)
        self.z[idx] = state.z
        self.step_size[idx] = adapt_step_size(self.step_size[idx], info.accept_prob, self.target_accept)
        return state, info

    def m_step(self, x: torch.Tensor, z: torch.Tensor) -> None:
        """`n_weight_updates` gradient steps on theta for the MAP objective at the samples z (M, J)."""
        for _ in range(self.n_weight_updates):
            objective = map_objective(self.model.log_joint(x, z), self.n_train)  # + log p(theta) / N in the optimizer
            self.optimizer.zero_grad(set_to_none=True)
            (-objective).backward()
            self.optimizer.step()

    def step(self, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """E-step then M-step; returns log p_theta(x, z) at the new samples (before the M-step)."""
        state, _ = self.e_step(x, idx, generator)
        self.m_step(x, state.z)
        return state.log_prob

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "z": self.z.clone(), "step_size": self.step_size.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("z", "step_size"):
            saved, own = state[name], getattr(self, name)
            if saved.shape != own.shape:
                raise ValueError(f"MCEM {name} of shape {tuple(saved.shape)} does not fit {tuple(own.shape)}")
            own.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])


def build(cfg, model: VAE, n_train: int, device: torch.device) -> MCEM:
    """MCEM over the decoder's theta; chains start from the prior, drawn with a generator of the seed."""
    m = cfg.method
    like = next(model.decoder.parameters())
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    z = torch.randn((n_train, model.latent_dim), generator=generator, device=device, dtype=like.dtype)  # z ~ p(z)
    return MCEM(
        model=model,
        optimizer=map_optimizer(cfg, model.decoder.named_parameters(), n_train, device),
        n_train=n_train,
        n_leapfrog=m.n_leapfrog,
        n_weight_updates=m.n_weight_updates,
        target_accept=m.target_accept,
        jitter=m.jitter,
        z=z,
        step_size=torch.full((n_train,), m.init_step_size, device=device, dtype=like.dtype),
    )
