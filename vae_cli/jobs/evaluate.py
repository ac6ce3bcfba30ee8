"""The `vae-eval` job: an estimate of log p(x) for a trained run (AEVB App. D; IWAE and AIS, later practice).

`evaluate(cfg) -> dict` reads the run folder's checkpoint and config (`saved.py`; no model setting is
repeated on the command line), loads one split of the run's data set, runs one estimator of
`likelihood.ESTIMATORS` over it in batches, prints a table row and writes `<name>.json` (the
summary), `<name>.npy` (per-datapoint estimates, nats) and `<name>.npz` (per-datapoint Monte Carlo
standard errors and diagnostics, and the exact log p(x) of a linear-Gaussian run) into the run's
`eval/` folder, under a name no earlier result has (`eval_files.py`). Every check comes before
anything is written. A stack run is evaluated one model at a time (`member=k`). A bar on stderr shows
the points done, their rate, the time left and the running mean of the estimate.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..config import check_fields
from ..eval_schemas import LIKELIHOOD_SCHEMAS, EvalConfig
from ..errors import UserError
from ..likelihood import ESTIMATORS, Estimate, concat
from ..likelihood.importance import samples_per_chunk
from ..methods import METHODS
from ..models import LinearGaussianDecoder
from ..saved import load_data, member_weights, n_models, posterior_draws, read_checkpoint, rebuild_model
from ..signals import InterruptCheck
from . import cpu_threads, select_device
from .eval_files import print_table, summarise, write_result

RELIABLE_LATENT_DIM = 4  # AEVB App. D: reliable below 5 latent dimensions
HMC_ESTIMATORS = ("ais", "appendix_d", "bdmc")  # small tensors: one thread is the fastest (threads=null)


def validate_eval(cfg: DictConfig) -> None:
    """The checks types cannot express, each a one-line UserError naming the key and a fix."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise UserError("run_dir is required; point it at a vae-train run folder, e.g. vae-eval run_dir=outputs/2026-11-25/10-00-00-000000")
    check_fields(cfg, EvalConfig)
    check_fields(cfg.likelihood, LIKELIHOOD_SCHEMAS[cfg.likelihood.name], "likelihood.")
    if cfg.likelihood.name == "bdmc" and not cfg.likelihood.steps:
        raise UserError("likelihood.steps is empty; give the AIS budgets to sweep, e.g. likelihood.steps=[100,1000]")
    for key, allowed in (("split", ("train", "test", "valid")), ("device", ("auto", "cpu", "cuda"))):
        if cfg[key] not in allowed:
            raise UserError(f"{key}={cfg[key]} is not one of {', '.join(allowed)}; set {key}=<one of them>")
    if cfg.likelihood.name == "appendix_d" and cfg.likelihood.n_samples < 2:
        raise UserError("likelihood.n_samples must be at least 2 to fit q(z) (AEVB App. D); e.g. likelihood.n_samples=50")


def estimate(models: list, x: torch.Tensor, likelihood, batch_size: int, generator: torch.Generator,
             progress: bool = False, desc: str = "") -> tuple[Estimate, float]:
    """The chosen estimator over the rows of x in batches, averaged over `models` (one model, or the
    draws theta ~ q(theta) of a full-VB run); the estimate and its wall-clock seconds. `progress`: a
    bar over the points (of every draw) with the running mean of the estimates so far."""
    estimator = ESTIMATORS[likelihood.name]
    start, results, total, done = time.perf_counter(), [], 0.0, 0
    with InterruptCheck() as interrupt, tqdm(total=len(models) * x.shape[0], desc=desc, unit=" points", dynamic_ncols=True,
                                             disable=not progress) as bar:
        for model in models:
            parts = []
            for batch in x.split(batch_size):
                interrupt.check()
                parts.append(estimator(model, batch, likelihood, generator))
                if progress:
                    total, done = total + parts[-1].log_px.double().sum().item(), done + batch.shape[0]
                    bar.set_postfix_str(f"log p(x) {total / done:.3f}", refresh=False)
                bar.update(batch.shape[0])
            results.append(concat(parts))
    return average_estimates(results), time.perf_counter() - start


def average_estimates(results: list[Estimate]) -> Estimate:
    """The per-datapoint mean of estimates made with different draws of theta (their Monte Carlo
    errors averaged in quadrature: independent draws)."""
    if len(results) == 1:
        return results[0]
    k = len(results)
    return Estimate(torch.stack([r.log_px for r in results]).mean(0), torch.stack([r.mc_std_err**2 for r in results]).sum(0).sqrt() / k,
                    {name: torch.stack([r.diagnostics[name] for r in results]).mean(0) for name in results[0].diagnostics})


def sandwich_job(cfg, run_dir: Path, run, state: dict, device: torch.device) -> dict:
    """likelihood=bdmc: the sandwich on data simulated from the model (`jobs/bdmc.py`); no data set is read."""
    from ..data_files import IMAGE_SHAPES
    from .bdmc import run_bdmc

    height, width = IMAGE_SHAPES[run.dataset.name]
    model = rebuild_model(run, state, height * width, device, cfg.member)
    settings = OmegaConf.to_object(cfg.likelihood)
    unknown = [name for name in settings.others if name not in ESTIMATORS]
    if unknown:
        raise UserError(f"likelihood.others holds {unknown[0]!r}; choose from {', '.join(ESTIMATORS)}")
    if not METHODS[run.method.name].capabilities.bound:  # MCEM: no q(z|x) to sample from
        settings.others = [name for name in settings.others if name not in ("elbo", "iwae")]
    summary = {"estimator": "bdmc", "settings": {k: v for k, v in asdict(settings).items() if k != "name"}, "run_dir": str(run_dir),
               "samples": state.get("progress", {}).get("samples"), "dataset": run.dataset.name, "latent_dim": model.latent_dim,
               "seed": cfg.seed, "member": cfg.member, "device": str(device), "torch": torch.__version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    paths = run_bdmc(model, settings, cfg.batch_size, torch.Generator(device=device).manual_seed(cfg.seed), run_dir, summary)
    print(f"results:  {paths['.json']} (+ .npz per-point bounds, .png/.pdf figure)")
    return {**summary, "paths": paths}


def evaluate(cfg) -> dict:
    """One vae-eval job: check everything, estimate, print, write; returns the summary."""
    validate_eval(cfg)
    with cpu_threads(cfg.threads, cfg.flush_denormals, small_tensors=cfg.likelihood.name in HMC_ESTIMATORS):
        return _evaluate(cfg)


def _evaluate(cfg) -> dict:
    device = select_device(cfg.device)
    run_dir = Path(cfg.run_dir).expanduser()
    run, state = read_checkpoint(run_dir, device)
    member_weights(run, state, cfg.member)  # a wrong member= fails before the data is read
    if cfg.likelihood.name == "bdmc":
        return sandwich_job(cfg, run_dir, run, state, device)
    data = load_data(run, device, cfg.dataset.root, cfg.split)
    x = data.train_eval if cfg.split == "train" else data.test  # one fixed binarization, if any
    if cfg.n_points is not None and cfg.n_points > x.shape[0]:
        raise UserError(f"n_points={cfg.n_points} exceeds the {x.shape[0]} points of the {cfg.split} split; "
                        f"use at most {x.shape[0]} (or n_points=null for all)")
    x = x[: cfg.n_points]
    model = rebuild_model(run, state, x.shape[1], device, cfg.member)
    likelihood = OmegaConf.to_object(cfg.likelihood)
    if not METHODS[run.method.name].capabilities.bound and likelihood.name in ("elbo", "iwae"):
        raise UserError(f"{run_dir} was trained by {run.method.name}, which learns no q(z|x) for likelihood={likelihood.name} to sample from; "
                        "use likelihood=ais or likelihood=appendix_d")
    if likelihood.name == "appendix_d" and model.latent_dim > RELIABLE_LATENT_DIM:
        print(f"vae-eval: warning: appendix_d is reliable only below 5 latent dimensions (AEVB App. D) and this "
              f"model has Nz={model.latent_dim}; prefer likelihood=iwae or likelihood=ais", file=sys.stderr)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    models, theta = posterior_draws(run, state, model, cfg.theta_draws, generator)
    result, seconds = estimate(models, x, likelihood, cfg.batch_size, generator, cfg.progress, f"{likelihood.name} {cfg.split}")
    exact = model.decoder.exact_log_marginal(x.double()).detach() if isinstance(model.decoder, LinearGaussianDecoder) else None
    settings = {k: v for k, v in asdict(likelihood).items() if k != "name"}
    if "chunk_size" in settings:  # what chunk_size (null: the memory budget) draws at once for a full batch
        settings["samples_per_chunk"] = samples_per_chunk(likelihood.chunk_size, x[: cfg.batch_size])
    k = n_models(run)
    of_member = {"member": cfg.member, "n_models": k, "member_seed": run.seed + cfg.member} if k > 1 else {}
    summary = {"estimator": likelihood.name, "split": cfg.split, **({"theta": theta} if theta else {}), **of_member,
               **summarise(result, exact, seconds), "settings": settings, "run_dir": str(run_dir),
               "samples": state.get("progress", {}).get("samples"), "dataset": run.dataset.name, "latent_dim": model.latent_dim,
               "seed": cfg.seed, "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    paths = write_result(run_dir, f"{likelihood.name}-{cfg.split}" + (f"-member{cfg.member}" if of_member else ""), summary, result, exact)
    print_table(summary)
    print(f"results:  {paths['.json']} (+ .npy estimates, .npz per-point details)")
    return {**summary, "paths": paths}
