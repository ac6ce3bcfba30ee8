"""The Python API: a trained run or a whole sweep in a notebook, through the code the console scripts use.

    import vae_cli
    run = vae_cli.load_run("outputs/2026-12-04/10-00-00-000000")
    run.metrics_frame()                        # the metrics as a pandas DataFrame (or run.metrics, a list of rows)
    x = run.data("test")[:100]                 # the run's own test split
    mean, var = run.encode(x)                  # q(z|x)
    images = run.decode(mean)                  # p(x|z)'s mean
    run.log_likelihood(x, "iwae", k=1000)      # the estimate vae-eval makes (likelihood/)
    sweep = vae_cli.load_sweep("multirun/fig2_mnist/full")   # its runs grouped as vae-report groups them

`load_run` reads the run folder as `vae-eval` does (`saved.py`: the config of any version upgraded and
typed, the checkpoint with weights_only, the model rebuilt by `models.build_vae`); every method's model
loads (MCEM's has no trained encoder), a stack's models by `member`. `load_sweep` is `sweep.load_sweep`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .data_files import IMAGE_SHAPES
from .errors import UserError
from .evaluation import bounds_per_datapoint, evaluate_bound
from .generators import evaluation_generator
from .jobs.eval_files import EVAL_DIR
from .jobs.evaluate import average_estimates
from .likelihood import ESTIMATORS, SETTINGS, Estimate, concat
from .methods import METHODS
from .models import VAE
from .runs import read_metrics
from .saved import load_data, n_models, posterior_draws, read_checkpoint, rebuild_model
from .sweep import Sweep
from .sweep import load_sweep as _load_sweep


@dataclass
class TrainedRun:
    """A vae-train run folder: its config, metrics, evaluations and trained model(s) on `device`."""

    path: Path
    config: DictConfig  # as this version names it, typed
    metrics: list[dict]  # the rows of metrics.jsonl
    device: torch.device
    state: dict = field(repr=False)  # the checkpoint

    @property
    def n_models(self) -> int:
        """Models the run trained side by side (speed.n_models); pick one with `member=`."""
        return n_models(self.config)

    def metrics_frame(self):
        """The metrics as a pandas DataFrame, one row per evaluation (and model of a stack)."""
        try:
            import pandas
        except ImportError:
            raise UserError("metrics_frame() needs pandas: pip install pandas (or read run.metrics, a list of rows)") from None
        return pandas.DataFrame(self.metrics)

    def evaluations(self) -> list[dict]:
        """The summaries vae-eval wrote for this run (eval/*.json), oldest first."""
        return [json.loads(p.read_text()) for p in sorted((self.path / EVAL_DIR).glob("*.json"))]

    @cached_property
    def _data_dim(self) -> int:
        height, width = IMAGE_SHAPES[self.config.dataset.name]
        return height * width

    def model(self, member: int = 0) -> VAE:
        """Model `member` of the run (0 unless it trained a stack), frozen, on the run's device."""
        return rebuild_model(self.config, self.state, self._data_dim, self.device, member)

    def data(self, split: str = "test", root: str | None = None) -> torch.Tensor:
        """The run's own data split (train | test | valid), as it trained and evaluated on it."""
        data = load_data(self.config, self.device, root, split)
        return data.train_eval if split == "train" else data.test

    def _encoder_model(self, member: int) -> VAE:
        if not METHODS[self.config.method.name].capabilities.bound:
            raise UserError(f"this run was trained by {self.config.method.name}, which learns no q(z|x); "
                            "use decode, sample or log_likelihood with ais or appendix_d")
        return self.model(member)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): its mean and variance, (n, J) each."""
        q = self._encoder_model(member).encoder(x.to(self.device))
        return q.mean, q.log_var.exp()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, member: int = 0) -> torch.Tensor:
        """p(x|z)'s mean, (n, D): Bernoulli probabilities or Gaussian means."""
        return self.model(member).decoder(z.to(self.device)).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws z ~ p(z) and the decoder's means at them, (n, J) and (n, D)."""
        model = self.model(member)
        z = torch.randn((n, model.latent_dim), generator=generator, device=self.device)
        return z, model.decoder(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, member: int = 0) -> torch.Tensor:
        """The decoder's mean at q(z|x)'s mean, (n, D)."""
        model = self._encoder_model(member)
        return model.decoder(model.encoder(x.to(self.device)).mean).mean

    def bound(self, x: torch.Tensor, estimator: str = "sgvb_b", n_samples: int = 1, batch_size: int = 1000,
              generator: torch.Generator | None = None, member: int = 0) -> torch.Tensor:
        """The SGVB bound of each row of x, (n,), as the training loop evaluates it (`evaluation.py`).
        With `evaluation_generator(samples)` as generator and the loop's batch size it is the logged value."""
        return bounds_per_datapoint(self._encoder_model(member), x.to(self.device), estimator, n_samples, batch_size, generator)

    def evaluate(self, member: int = 0) -> dict:
        """The metrics row of the run's last evaluation recomputed from its checkpoint, through the training
        loop's own evaluation (`jobs.train.evaluation_rows`): the same values as `metrics` on the same machine."""
        from .jobs.train import evaluation_rows

        samples = self.state["progress"]["samples"]
        row = evaluation_rows(self.config, _Checkpointed(self, member), load_data(self.config, self.device), samples,
                              self.state["progress"]["step"])[0]
        return {**row, **({"model": member, "seed": self.config.seed + member} if self.n_models > 1 else {})}

    def evaluation_generator(self, samples: int | None = None) -> torch.Generator:
        """The generator the loop evaluated with at `samples` (default: the run's last evaluation)."""
        samples = self.metrics[-1]["samples"] if samples is None else samples
        return evaluation_generator(self.device, self.config.seed, samples)

    def log_likelihood(self, x: torch.Tensor, estimator: str = "iwae", generator: torch.Generator | None = None, member: int = 0,
                       batch_size: int = 100, theta_draws: int = 0, **settings: Any) -> Estimate:
        """log p(x) of each row of x by a vae-eval estimator (iwae | ais | appendix_d | elbo) with `settings`
        overriding its defaults (e.g. k=1000): the per-datapoint estimates, MC standard errors, diagnostics."""
        if estimator not in ESTIMATORS:
            raise UserError(f"estimator={estimator!r} is not one of {', '.join(ESTIMATORS)}")
        model = self._encoder_model(member) if estimator in ("elbo", "iwae") else self.model(member)
        generator = generator or torch.Generator(device=self.device).manual_seed(0)
        models, _ = posterior_draws(self.config, self.state, model, theta_draws, generator)
        chosen = SETTINGS[estimator](**settings)
        return average_estimates([concat([ESTIMATORS[estimator](m, batch, chosen, generator) for batch in x.to(self.device).split(batch_size)])
                                  for m in models])


class _Checkpointed:
    """Model `member` of a run as the loop's evaluation sees a learner (`learner.Member`)."""

    def __init__(self, run: TrainedRun, member: int):
        from .learner import Member
        from .methods import METHODS

        self.capabilities = METHODS[run.config.method.name].capabilities
        model, fields = run.model(member), dict
        bound = functools.partial(evaluate_bound, model)
        if run.config.method.name == "full_vb":  # at q(theta)'s mean or over draws, as FullVB.bound
            from .full_vb import evaluate_over_posterior, posterior_from_checkpoint

            posterior, m = posterior_from_checkpoint(model, run.state), run.config.method
            bound = lambda x, estimator, n_samples, batch_size, g: evaluate_over_posterior(  # noqa: E731
                model, posterior, x, estimator, n_samples, batch_size, m.eval_draws, g)
            fields = lambda: {"theta": "mean" if m.eval_draws == 0 else f"q_draws:{m.eval_draws}",  # noqa: E731
                              "kl_theta": posterior.kl_to_prior(run.config.prior.precision).item()}
        self._members = [Member(model, member, bound, fields)]

    def members(self):
        return self._members


def load_run(path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The run in `path` (a vae-train run folder), its models on `device`."""
    path, device = Path(path).expanduser(), torch.device(device)
    config, state = read_checkpoint(path, device)
    return TrainedRun(path, config, read_metrics(path), device, state)


def load_sweep(path: str | Path) -> Sweep:
    """The runs under `path` grouped as vae-report groups them (`sweep.load_sweep`)."""
    return _load_sweep(path)
