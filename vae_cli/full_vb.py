"""Full variational Bayes over the decoder's parameters: AEVB App. F, eqs. (13)-(24).

The generative parameters theta get a hyperprior p_alpha(theta) = N(0, I / prior.precision) and a
factorised Gaussian posterior q_phi(theta) = N(mu_theta, diag(sigma_theta^2)) (App. F.1, eq. (23)),
learned together with the encoder q_phi(z|x) by ascending the marginal lower bound L(phi; X) of
eq. (14). One theta~ = mu_theta + sigma_theta * zeta, zeta ~ N(0, I) (eq. (19)) is drawn per
minibatch; the minibatch estimate of L(phi; X) is eq. (22) with the M datapoints sharing that theta~:

    L(phi; X) ~= (N / M) sum_i L~(theta~, phi; x_i) + [log p_alpha(theta~) - log q_phi(theta~)]

whose bracket has the closed form -KL(q_phi(theta) || p_alpha(theta)) in the Gaussian case (eq. (24)).
As everywhere in vae-cli the objective is divided by N (`estimators.map_objective`): per datapoint,
the parameter term then weighs M/N against the minibatch sum, i.e. it is counted once per epoch.

The means mu_theta ARE the decoder's own parameters (initialised as the paper's init), so the model
as it stands is theta at the posterior mean; the log standard deviations live in the method's state
and hence in every checkpoint. The encoder stays a point estimate with the usual weight prior
(`prior.scope`), as in the paper's example. No experiment of the paper uses this method; the method
that trains it is `methods/full_vb.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from .distributions import LOG_2PI
from .estimators import Estimator
from .evaluation import BoundEstimate, average, bounds_per_datapoint, evaluate_bound
from .models import VAE

KL_FORMS = ("closed_form", "monte_carlo")


class ParameterPosterior:
    """q_phi(theta) = N(mu, diag(sigma^2)) over named parameters of a module (AEVB App. F.1, eq. (23)).

    `mean[name]` is the module's own parameter (not a copy); `log_std[name]` is a leaf tensor of the
    same shape holding log sigma, trained by the same optimizer.
    """

    def __init__(self, module: nn.Module, names: Iterable[str], init_log_std: float):
        params = dict(module.named_parameters())
        self.mean = {name: params[name] for name in names}
        self.log_std = {n: torch.full_like(p, init_log_std).detach().requires_grad_(True) for n, p in self.mean.items()}

    def noise(self, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """zeta ~ p(zeta) = N(0, I), one per parameter (AEVB eq. (19))."""
        return {n: torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) for n, mu in self.mean.items()}

    def reparameterize(self, zeta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """theta~ = h_phi(zeta) = mu + sigma * zeta (AEVB eq. (19))."""
        return {n: mu + torch.exp(self.log_std[n]) * zeta[n] for n, mu in self.mean.items()}

    def rsample(self, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """theta~ ~ q_phi(theta), differentiable in mu and log sigma."""
        return self.reparameterize(self.noise(generator))

    def log_prob(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """log q_phi(theta), summed over every element."""
        return sum(gaussian_log_prob(theta[n], mu, self.log_std[n]) for n, mu in self.mean.items())

    def kl_to_prior(self, precision: float) -> torch.Tensor:
        """KL(q_phi(theta) || N(0, I / precision)) in closed form; for precision 1 this is minus the
        last sum of AEVB eq. (24): 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
        total = 0.0
        for n, mu in self.mean.items():
            log_std = self.log_std[n]
            per_element = 0.5 * precision * (torch.exp(2.0 * log_std) + mu * mu) - log_std
            total = total + per_element.sum() - 0.5 * mu.numel() * (1.0 + math.log(precision))
        return total

    def parameters(self) -> list[torch.Tensor]:
        return list(self.log_std.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.log_std.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.log_std):
            raise ValueError(f"q(theta) covers {sorted(self.log_std)}, the state holds {sorted(state)}")
        with torch.no_grad():
            for n, t in self.log_std.items():
                t.copy_(state[n])


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor | float, log_std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2), summed over every element."""
    log_std = torch.as_tensor(log_std, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI).sum()


def log_hyperprior(theta: dict[str, torch.Tensor], precision: float) -> torch.Tensor:
    """log p_alpha(theta) = log N(theta; 0, I / precision), normalised (App. F.1; the paper's alpha = 1)."""
    log_std = -0.5 * math.log(precision)
    return sum(gaussian_log_prob(t, 0.0, log_std) for t in theta.values())


def parameter_term(posterior: ParameterPosterior, theta: dict[str, torch.Tensor], precision: float, kl: str) -> torch.Tensor:
    """The theta part of eq. (21): log p_alpha(theta~) - log q_phi(theta~) at the drawn theta~
    (`monte_carlo`), or its expectation -KL(q_phi(theta) || p_alpha(theta)) (`closed_form`, eq. (24))."""
    if kl == "closed_form":
        return -posterior.kl_to_prior(precision)
    if kl == "monte_carlo":
        return log_hyperprior(theta, precision) - posterior.log_prob(theta)
    raise ValueError(f"unknown KL form {kl!r}; choose one of {', '.join(KL_FORMS)}")


class DecoderAt(nn.Module):
    """The decoder run with the tensors `theta` in place of its own parameters (same modules, no copy)."""

    def __init__(self, decoder: nn.Module, theta: dict[str, torch.Tensor]):
        super().__init__()
        self.decoder = decoder
        self.theta = theta

    def forward(self, z: torch.Tensor):
        return functional_call(self.decoder, self.theta, (z,))


def model_at(model: VAE, theta: dict[str, torch.Tensor]) -> VAE:
    """The model p_theta(x, z) with decoder parameters `theta` (any subset of the decoder's names)
    and the same encoder: what the SGVB estimators and `evaluate_bound` accept."""
    return VAE(model.encoder, DecoderAt(model.decoder, theta), model.latent_dim, model.data_dim)


def sgvb_full_vb(model: VAE, posterior: ParameterPosterior, x: torch.Tensor, eps: torch.Tensor, zeta: dict[str, torch.Tensor],
                 estimator: Estimator, n_train: int, precision: float, kl: str) -> torch.Tensor:
    """Each datapoint's share of the App. F minibatch estimate, (M,): L~(theta~, phi; x_i) + P / N.

    theta~ = h_phi(zeta), one for the minibatch (eq. (19)); the SGVB estimator (eq. (6) or (7), at the
    noise eps) at theta~, plus the parameter term P of eq. (21) shared out over the N datapoints. The
    mean over the minibatch is (1/N) x eq. (22)/(24), an unbiased estimate of L(phi; X) / N.
    """
    theta = posterior.reparameterize(zeta)
    bounds = estimator(model_at(model, theta), x, eps)  # (M,)
    return bounds + parameter_term(posterior, theta, precision, kl) / n_train


def decoder_draws(model: VAE, posterior: ParameterPosterior, n_draws: int, generator: torch.Generator) -> Iterator[VAE]:
    """`n_draws` models whose decoder parameters are independent draws theta ~ q_phi(theta).

    For evaluating a full-VB run (e.g. `vae-eval`): build the model from the checkpoint's config,
    load `state["model"]` (the decoder then holds the posterior means: the model itself is theta at
    the mean), then `posterior = posterior_from_checkpoint(model, state)`; average any per-datapoint
    bound over `decoder_draws(model, posterior, K, generator)` and say so (`theta="q_draws:K"`).
    """
    for _ in range(n_draws):
        yield model_at(model, {n: t.detach() for n, t in posterior.rsample(generator).items()})


def posterior_from_checkpoint(model: VAE, state: dict) -> ParameterPosterior:
    """q_phi(theta) of a full-VB checkpoint: means from `model` (already loaded with `state["model"]`),
    log standard deviations from `state["method"]["log_std"]`."""
    method = state["method"]
    log_std = method["extra"]["log_std"] if "extra" in method else method["log_std"]  # this version's checkpoints, or format 2
    posterior = ParameterPosterior(model.decoder, log_std.keys(), 0.0)
    posterior.load_state_dict(log_std)
    return posterior


@torch.no_grad()
def evaluate_over_posterior(model: VAE, posterior: ParameterPosterior, x: torch.Tensor, estimator: str, n_samples: int,
                            batch_size: int, n_draws: int, generator: torch.Generator) -> BoundEstimate:
    """E_q(theta)[L(theta, phi; x)] per datapoint, averaged over `n_draws` draws of theta; the standard
    error is over datapoints of those averages. `n_draws=0`: the bound at theta = the posterior mean."""
    if n_draws == 0:
        return evaluate_bound(model, x, estimator, n_samples, batch_size, generator)
    draws = [bounds_per_datapoint(m, x, estimator, n_samples, batch_size, generator)
             for m in decoder_draws(model, posterior, n_draws, generator)]  # (K, n)
    return average(torch.stack(draws).mean(0))
