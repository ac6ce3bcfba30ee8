"""The `vae-eval` job: an estimate of log p(x) for a trained run (AEVB App. D; IWAE and AIS, later practice).

`evaluate(cfg) -> dict` reads the run folder's checkpoint and config (`saved.py`; no model setting is
repeated on the command line), loads one split of the run's data set, runs one estimator of
`likelihood.ESTIMATORS` over it in batches, prints a table row and writes `<name>.json` (the
summary), `<name>.npy` (per-datapoint estimates, nats) and `<name>.npz` (per-datapoint Monte Carlo
standard errors and diagnostics, and the exact log p(x) of a linear-Gaussian run) into the run's
`eval/` folder, under a name no earlier result has (`eval_files.py`). Every check comes before
anything is written. A stack run is evaluated one model at a time (`member=k`).
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from ..config import _checks, check
from ..errors import UserError
from ..likelihood import ESTIMATORS, SETTINGS, Estimate, concat
from ..likelihood.importance import samples_per_chunk
from ..saved import load_data, member_weights, n_models, posterior_draws, read_checkpoint, rebuild_model
from . import configure_cpu, select_device
from .eval_files import print_table, summarise, write_result

RELIABLE_LATENT_DIM = 4  # AEVB App. D: reliable below 5 latent dimensions


@dataclass
class EvalDatasetConfig:
    root: Optional[str] = None  # folder with the data files; null: where the run found them


@dataclass
class EvalConfig:
    likelihood: Any = MISSING  # one option of conf/likelihood/
    run_dir: str = MISSING  # the vae-train run folder to evaluate
    split: str = "test"  # train | test | valid (MNIST only)
    n_points: Optional[int] = check(None, "positive")  # the first n points of the split; null: all
    batch_size: int = check(100, "positive")  # datapoints an estimator call
    seed: int = 0  # the estimator's noise
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = check(None, "positive")  # torch intra-op threads; null: torch's default
    flush_denormals: bool = True  # CPU: subnormal floats read and written as 0 (`jobs.configure_cpu`)
    theta_draws: int = check(0, "non_negative")  # full-VB runs: 0 at theta = q(theta)'s mean; K averaged over K draws theta ~ q
    member: int = check(0, "non_negative")  # stack runs (speed.n_models=K): model 0..K-1, the one trained as seed s + member
    dataset: EvalDatasetConfig = field(default_factory=EvalDatasetConfig)


def likelihood_schema(name: str, settings: type) -> type:
    """The schema of conf/likelihood/<name>.yaml: the estimator's settings plus the `name` that picks it."""
    return make_dataclass(f"{settings.__name__}Option", [("name", str, field(default=name))], bases=(settings,))


LIKELIHOOD_SCHEMAS = {name: likelihood_schema(name, settings) for name, settings in SETTINGS.items()}


def register_eval_configs(store) -> None:
    store.store(name="eval_schema", node=EvalConfig)
    for name, schema in LIKELIHOOD_SCHEMAS.items():
        store.store(group="likelihood", name=f"{name}_schema", node=schema)


def validate_eval(cfg: DictConfig) -> None:
    """The checks types cannot express, each a one-line UserError naming the key and a fix."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise UserError("run_dir is required; point it at a vae-train run folder, e.g. vae-eval run_dir=outputs/2026-11-25/10-00-00-000000")
    _checks(cfg, EvalConfig)
    _checks(cfg.likelihood, LIKELIHOOD_SCHEMAS[cfg.likelihood.name], "likelihood.")
    for key, allowed in (("split", ("train", "test", "valid")), ("device", ("auto", "cpu", "cuda"))):
        if cfg[key] not in allowed:
            raise UserError(f"{key}={cfg[key]} is not one of {', '.join(allowed)}; set {key}=<one of them>")
    if cfg.likelihood.name == "appendix_d" and cfg.likelihood.n_samples < 2:
        raise UserError("likelihood.n_samples must be at least 2 to fit q(z) (AEVB App. D); e.g. likelihood.n_samples=50")


def estimate(models: list, x: torch.Tensor, likelihood, batch_size: int, generator: torch.Generator) -> tuple[Estimate, float]:
    """The chosen estimator over the rows of x in batches, averaged over `models` (one model, or the
    draws theta ~ q(theta) of a full-VB run); the estimate and its wall-clock seconds."""
    estimator = ESTIMATORS[likelihood.name]
    start = time.perf_counter()
    results = [concat([estimator(model, batch, likelihood, generator) for batch in x.split(batch_size)]) for model in models]
    return average_estimates(results), time.perf_counter() - start


def average_estimates(results: list[Estimate]) -> Estimate:
    """The per-datapoint mean of estimates made with different draws of theta (their Monte Carlo
    errors averaged in quadrature: independent draws)."""
    if len(results) == 1:
        return results[0]
    k = len(results)
    return Estimate(torch.stack([r.log_px for r in results]).mean(0), torch.stack([r.mc_std_err**2 for r in results]).sum(0).sqrt() / k,
                    {name: torch.stack([r.diagnostics[name] for r in results]).mean(0) for name in results[0].diagnostics})


def evaluate(cfg) -> dict:
    """One vae-eval job: check everything, estimate, print, write; returns the summary."""
    validate_eval(cfg)
    configure_cpu(cfg.threads, cfg.flush_denormals)
    device = select_device(cfg.device)
    run_dir = Path(cfg.run_dir).expanduser()
    run, state = read_checkpoint(run_dir, device)
    member_weights(run, state, cfg.member)  # a wrong member= fails before the data is read
    data = load_data(run, device, cfg.dataset.root, cfg.split)
    x = data.train_eval if cfg.split == "train" else data.test  # one fixed binarization, if any
    if cfg.n_points is not None and cfg.n_points > x.shape[0]:
        raise UserError(f"n_points={cfg.n_points} exceeds the {x.shape[0]} points of the {cfg.split} split; "
                        f"use at most {x.shape[0]} (or n_points=null for all)")
    x = x[: cfg.n_points]
    model = rebuild_model(run, state, x.shape[1], device, cfg.member)
    likelihood = OmegaConf.to_object(cfg.likelihood)
    if run.method.name == "mcem" and likelihood.name in ("elbo", "iwae"):
        raise UserError(f"{run_dir} was trained by MCEM, which learns no q(z|x) for likelihood={likelihood.name} to sample from; "
                        "use likelihood=ais or likelihood=appendix_d")
    if likelihood.name == "appendix_d" and model.latent_dim > RELIABLE_LATENT_DIM:
        print(f"vae-eval: warning: appendix_d is reliable only below 5 latent dimensions (AEVB App. D) and this "
              f"model has Nz={model.latent_dim}; prefer likelihood=iwae or likelihood=ais", file=sys.stderr)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    models, theta = posterior_draws(run, state, model, cfg.theta_draws, generator)
    result, seconds = estimate(models, x, likelihood, cfg.batch_size, generator)
    exact_fn = getattr(model.decoder, "exact_log_marginal", None)
    exact = exact_fn(x.double()).detach() if exact_fn is not None else None
    settings = {k: v for k, v in asdict(likelihood).items() if k != "name"}
    if "chunk_size" in settings:  # what chunk_size (null: the memory budget) draws at once for a full batch
        settings["samples_per_chunk"] = samples_per_chunk(likelihood.chunk_size, x[: cfg.batch_size])
    k = n_models(run)
    of_member = {"member": cfg.member, "n_models": k, "member_seed": run.seed + cfg.member} if k > 1 else {}
    summary = {"estimator": likelihood.name, "split": cfg.split, **({"theta": theta} if theta else {}), **of_member,
               **summarise(result, exact, seconds), "settings": settings, "run_dir": str(run_dir),
               "samples": state.get("progress", {}).get("samples"), "dataset": run.dataset.name, "latent_dim": model.latent_dim,
               "seed": cfg.seed, "device": str(device), "torch": torch.__version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    paths = write_result(run_dir, f"{likelihood.name}-{cfg.split}" + (f"-member{cfg.member}" if of_member else ""), summary, result, exact)
    print_table(summary)
    print(f"results:  {paths['.json']} (+ .npy estimates, .npz per-point details)")
    return {**summary, "paths": paths}
