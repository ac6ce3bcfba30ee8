"""Full variational Bayes over the decoder's parameters (AEVB App. F), as a training method.

One update per step ascends the minibatch estimate of L(phi; X) / N (eqs. (22), (24); `full_vb.py`)
in the variational parameters: the encoder's phi, and q(theta)'s means (the decoder's own parameters)
and log standard deviations. Its draws are zeta ~ p(zeta) for theta~ = h_phi(zeta) (eq. (19)), one
for the minibatch, then eps ~ p(eps) for each datapoint's z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..estimators import Estimator, get_estimator, noise
from ..evaluation import BoundEstimate
from ..full_vb import ParameterPosterior, evaluate_over_posterior, sgvb_full_vb
from ..models import VAE
from ..optim import Schedule, map_optimizer
from . import Capabilities, Minibatch, Update

NAME = "full_vb"
CAPABILITIES = Capabilities(bound=True, compile=False, stack=False)


@dataclass
class FullVB:
    model: VAE  # its decoder holds mu_theta
    n_train: int
    optimizers: dict[str, torch.optim.Optimizer]
    schedules: dict[str, Schedule]
    skip_nonfinite: bool
    posterior: ParameterPosterior
    estimator: Estimator
    n_samples: int  # L
    precision: float  # alpha of p_alpha(theta), and the point estimates' weight prior
    kl: str  # closed_form | monte_carlo
    eval_draws: int  # 0: evaluate at the posterior mean; K: average over K draws theta ~ q(theta)
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def updates(self) -> list[Update]:
        return [Update("phi", self.terms, self.draw)]

    def draw(self, model: VAE, batch: Minibatch, generator: torch.Generator):
        zeta = self.posterior.noise(generator)  # theta~ = h_phi(zeta), eq. (19)
        return batch.x, noise(model, batch.x, self.n_samples, generator), zeta

    def terms(self, model: VAE, x: torch.Tensor, eps: torch.Tensor, zeta: dict) -> tuple[torch.Tensor, torch.Tensor]:
        shares = sgvb_full_vb(model, self.posterior, x, eps, zeta, self.estimator, self.n_train, self.precision, self.kl)
        return shares, shares  # (M,), App. F eq. (22)/(24) over N

    def extra_state(self) -> dict:
        return {"log_std": self.posterior.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.posterior.load_state_dict(state["log_std"])

    def bound(self, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> BoundEstimate:
        """The train/test bound: at theta = q's mean, or averaged over `eval_draws` draws theta ~ q."""
        return evaluate_over_posterior(self.model, self.posterior, x, estimator, n_samples, batch_size, self.eval_draws, generator)

    def evaluation_fields(self) -> dict:
        """What the bounds are: theta at q's mean or over K draws, and KL(q(theta) || p_alpha(theta)) in nats."""
        with torch.no_grad():
            kl = self.posterior.kl_to_prior(self.precision).item()
        return {"theta": "mean" if self.eval_draws == 0 else f"q_draws:{self.eval_draws}", "kl_theta": kl}


def build(cfg, model: VAE, n_train: int, device: torch.device, generator: torch.Generator) -> FullVB:
    """q(theta) over every decoder parameter; the encoder stays a point estimate under `prior.scope`."""
    names = [n for n, _ in model.decoder.named_parameters()]
    posterior = ParameterPosterior(model.decoder, names, cfg.method.init_log_sigma)
    in_q = {id(p) for p in posterior.mean.values()}
    point = [(n, p) for n, p in model.named_parameters() if id(p) not in in_q]
    optimizer, schedule = map_optimizer(cfg, point, n_train, device, others=[*posterior.mean.values(), *posterior.parameters()])
    return FullVB(model, n_train, {"phi": optimizer}, {"phi": schedule}, cfg.trainer.on_nan == "skip_batch", posterior,
                  get_estimator(cfg.estimator.name), cfg.estimator.n_samples, cfg.prior.precision, cfg.method.kl, cfg.method.eval_draws)
