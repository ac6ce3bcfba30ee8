"""The `vae-eval` job: an estimate of log p(x) for a trained run (PAPER.md §8 App. D, §11).

`evaluate(cfg) -> dict` reads the run folder's checkpoint (weights_only) and the config saved in it,
rebuilds the model with `models.build_vae` (no model setting is repeated on the command line), loads
one split of the run's data set, runs one estimator of `marginal_likelihood.ESTIMATORS` over it in
batches, prints a table row and writes, under a name no earlier result has, into `<run_dir>/eval/`:
`<name>.json` (the summary), `<name>.npy` (the per-datapoint estimates, nats) and `<name>.npz` (the
per-datapoint Monte Carlo standard errors and diagnostics, and the exact log p(x) of a
linear-Gaussian run). Every check happens before anything is written. A run of a stack of K models
(`trainer.n_models=K`) is evaluated one model at a time: `member=k` picks model k (default 0), the
one trained as `seed=s+k`; its results are named `<name>-member<k>` and say which model they are of.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from .config import DatasetConfig, validate_eval
from .data import load_dataset
from .errors import UserError
from .marginal_likelihood import ESTIMATORS, Estimate, concat, samples_per_chunk
from .models import build_vae
from .runs import ADDED_KEYS, CHECKPOINT_FILE, MODEL_FORMATS, atomic_write_bytes, load_checkpoint
from .stacked import member_state
from .train import configure_cpu, select_device

EVAL_DIR = "eval"
RELIABLE_LATENT_DIM = 4  # AEVB App. D: reliable below 5 latent dimensions


def read_run(run_dir: Path, device: torch.device) -> dict:
    """The checkpoint of a vae-train run: its saved config and model weights, checked."""
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir} is not a folder; point run_dir= at a vae-train run folder (outputs/<date>/<time>)")
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, map_location=device, formats=MODEL_FORMATS)  # the model's weights read the same in each
    config = state.get("config")
    if not isinstance(state.get("model"), dict) or not isinstance(config, dict) or not {"model", "dataset"} <= config.keys():
        raise UserError(f"{path} lacks the saved config or model weights vae-eval needs; evaluate a run written by vae-train")
    return state


def load_split(saved_dataset: dict, cfg, device: torch.device) -> torch.Tensor:
    """The first `cfg.n_points` rows of the requested split of the run's data set."""
    try:
        dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), saved_dataset)
    except Exception as e:  # noqa: BLE001 - any mismatch with today's schema
        raise UserError(f"the run's saved dataset config does not fit this vae-cli ({str(e).splitlines()[0][:120]}); use a matching vae-cli version") from None
    if cfg.dataset.root is not None:
        dataset.root = cfg.dataset.root
    if cfg.split == "valid" and dataset.name != "mnist":
        raise UserError(f"{dataset.name} has no valid split; choose split=train or split=test")
    if dataset.name == "mnist":
        dataset.test_split = "valid" if cfg.split == "valid" else "test"
    data = load_dataset(dataset, device)
    x = data.train_eval if cfg.split == "train" else data.test  # one fixed binarization, if any
    if cfg.n_points is not None and cfg.n_points > x.shape[0]:
        raise UserError(f"n_points={cfg.n_points} exceeds the {x.shape[0]} points of the {cfg.split} split; use at most {x.shape[0]} (or n_points=null for all)")
    return x[: cfg.n_points]


def n_models(config: dict) -> int:
    """How many models a run trained side by side (`trainer.n_models`; 1 for runs from before it)."""
    return (config.get("trainer") or {}).get("n_models", ADDED_KEYS["trainer.n_models"])


def member_weights(state: dict, member: int) -> dict:
    """The weights of model `member` of the checkpoint: the whole `model` of a one-model run."""
    k = n_models(state["config"])
    if k == 1 and member:
        raise UserError(f"member={member} picks a model of a run trained with trainer.n_models>1; this run holds one model: leave member=0")
    if not 0 <= member < k:
        raise UserError(f"member={member} is not a model of this run's stack of {k} (trainer.n_models={k}); choose member= from 0 to {k - 1}")
    return state["model"] if k == 1 else member_state(state["model"], member)


def rebuild_model(state: dict, data_dim: int, device: torch.device, member: int = 0):
    """The run's VAE (model `member` of a stack) from its saved `model` config and weights, frozen for evaluation."""
    m = state["config"]["model"]
    weights = member_weights(state, member)
    try:
        model = build_vae(data_dim, m["latent_dim"], list(m["hidden"]), m["decoder"], m["init_std"],
                          torch.Generator(), m.get("decoder_min_log_var"))
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint's weights do not fit its saved model config ({str(e).splitlines()[0][:120]}); evaluate a run written by this vae-cli") from None
    return model.to(device).eval().requires_grad_(False)


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
    return Estimate(
        torch.stack([r.log_px for r in results]).mean(0),
        torch.stack([r.mc_std_err**2 for r in results]).sum(0).sqrt() / k,
        {name: torch.stack([r.diagnostics[name] for r in results]).mean(0) for name in results[0].diagnostics},
    )


def models_to_evaluate(state: dict, model, theta_draws: int, generator: torch.Generator) -> tuple[list, str | None]:
    """The model as trained, or for a full-VB run theta at q(theta)'s mean or K draws theta ~ q."""
    method = state["config"].get("method", {}).get("name", "aevb")
    if method != "full_vb":
        if theta_draws:
            raise UserError(f"theta_draws={theta_draws} applies to method=full_vb runs; this run was trained with method={method}: leave theta_draws=0")
        return [model], None
    if not theta_draws:
        return [model], "mean"
    from .full_vb import decoder_draws, posterior_from_checkpoint

    posterior = posterior_from_checkpoint(model, state)
    return list(decoder_draws(model, posterior, theta_draws, generator)), f"q_draws:{theta_draws}"


def summarise(result: Estimate, exact: torch.Tensor | None, seconds: float) -> dict:
    """Means over datapoints: the estimate with its standard error over datapoints and its Monte
    Carlo standard error (sqrt of the summed per-datapoint variances, over n)."""
    log_px, n = result.log_px.double().cpu(), result.log_px.numel()
    row = {
        "points": n,
        "log_px": log_px.mean().item(),
        "std_err": log_px.std().item() / math.sqrt(n) if n > 1 else None,
        "mc_std_err": result.mc_std_err.double().pow(2).sum().sqrt().item() / n,
        "seconds": round(seconds, 3),
        "points_per_second": round(n / max(seconds, 1e-9), 3),
        "diagnostics": {k: v.double().mean().item() for k, v in result.diagnostics.items()},
    }
    if exact is not None:
        gap = log_px - exact.double().cpu()
        row.update(exact_log_px=exact.double().mean().item(), estimate_minus_exact=gap.mean().item(),
                   estimate_minus_exact_std_err=gap.std().item() / math.sqrt(n) if n > 1 else None)
    return _json_safe(row)


def _json_safe(value):
    """NaN and infinities (e.g. a standard error from one point) as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_result(run_dir: Path, stem: str, summary: dict, result: Estimate, exact: torch.Tensor | None) -> dict:
    """`<stem>-NNN.{npy,npz,json}` in <run_dir>/eval/ with the first NNN no file uses yet; the
    estimates first, each file atomically and never over an existing one."""
    folder = run_dir / EVAL_DIR
    per_point = {"mc_std_err": result.mc_std_err, **result.diagnostics, **({"exact_log_px": exact} if exact is not None else {})}
    per_point = {k: v.double().cpu().numpy() for k, v in per_point.items()}
    for i in range(1, 100_000):
        base = folder / f"{stem}-{i:03d}"
        files = {s: base.with_name(base.name + s) for s in (".npy", ".npz", ".json")}
        if any(f.exists() for f in files.values()):
            continue
        try:
            atomic_write_bytes(files[".npy"], _npy(result.log_px.double().cpu().numpy()), overwrite=False)
        except FileExistsError:  # another vae-eval took this name a moment ago
            continue
        atomic_write_bytes(files[".npz"], _npz(per_point), overwrite=False)
        summary["files"] = {"estimates": files[".npy"].name, "per_point": files[".npz"].name, "summary": files[".json"].name}
        atomic_write_bytes(files[".json"], (json.dumps(summary, indent=2) + "\n").encode(), overwrite=False)
        return {k: str(f) for k, f in files.items()}
    raise UserError(f"{folder} holds too many results named {stem}-*; move some away")


def print_table(s: dict) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    header = f"{'estimator':<11} {'split':<6} {'points':>7} {'log p(x)':>10} {'SE(data)':>9} {'MC SE':>8} {'seconds':>9}"
    line = (f"{s['estimator']:<11} {s['split']:<6} {s['points']:>7} {fmt(s['log_px'], '10.3f')} "
            f"{fmt(s['std_err'], '9.3f')} {fmt(s['mc_std_err'], '8.4f')} {s['seconds']:>9.1f}")
    if "exact_log_px" in s:
        header += f" {'exact':>10} {'est-exact':>10}"
        line += f" {s['exact_log_px']:10.3f} {s['estimate_minus_exact']:10.4f}"
    if "theta" in s:
        header += f" {'theta':>10}"
        line += f" {s['theta']:>10}"
    if "member" in s:
        header += f" {'member':>6} {'of seed':>7}"
        line += f" {s['member']:>6} {s['member_seed']:>7}"
    print(f"{header}\n{line}")


def evaluate(cfg) -> dict:
    """One vae-eval job: check everything, estimate, print, write; returns the summary."""
    validate_eval(cfg)
    configure_cpu(cfg.threads, cfg.flush_denormals)
    device = select_device(cfg.device)
    run_dir = Path(cfg.run_dir).expanduser()
    state = read_run(run_dir, device)
    member_weights(state, cfg.member)  # a wrong member= fails before the data is read
    x = load_split(state["config"]["dataset"], cfg, device)
    model = rebuild_model(state, x.shape[1], device, cfg.member)
    likelihood = OmegaConf.to_object(cfg.likelihood)
    if state["config"].get("method", {}).get("name") == "mcem" and likelihood.name in ("elbo", "iwae"):
        raise UserError(f"{run_dir} was trained by MCEM, which learns no q(z|x) for likelihood={likelihood.name} to sample from; "
                        "use likelihood=ais or likelihood=appendix_d")
    if likelihood.name == "appendix_d" and model.latent_dim > RELIABLE_LATENT_DIM:
        print(f"vae-eval: warning: appendix_d is reliable only below 5 latent dimensions (AEVB App. D) and this "
              f"model has Nz={model.latent_dim}; prefer likelihood=iwae or likelihood=ais", file=sys.stderr)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    models, theta = models_to_evaluate(state, model, cfg.theta_draws, generator)
    result, seconds = estimate(models, x, likelihood, cfg.batch_size, generator)
    exact_fn = getattr(model.decoder, "exact_log_marginal", None)
    exact = exact_fn(x.double()).detach() if exact_fn is not None else None
    settings = {k: v for k, v in asdict(likelihood).items() if k != "name"}
    if "chunk_size" in settings:  # what chunk_size (null: the memory budget) draws at once for a full batch
        settings["samples_per_chunk"] = samples_per_chunk(likelihood.chunk_size, x[: cfg.batch_size])
    k = n_models(state["config"])
    of_member = {"member": cfg.member, "n_models": k, "member_seed": state["config"]["seed"] + cfg.member} if k > 1 else {}
    summary = {"estimator": likelihood.name, "split": cfg.split, **({"theta": theta} if theta else {}), **of_member,
               **summarise(result, exact, seconds),
               "settings": settings, "run_dir": str(run_dir), "samples": state.get("progress", {}).get("samples"),
               "dataset": state["config"]["dataset"]["name"], "latent_dim": model.latent_dim, "seed": cfg.seed,
               "device": str(device), "torch": torch.__version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    paths = write_result(run_dir, f"{likelihood.name}-{cfg.split}" + (f"-member{cfg.member}" if of_member else ""), summary, result, exact)
    print_table(summary)
    print(f"results:  {paths['.json']} (+ .npy estimates, .npz per-point details)")
    return {**summary, "paths": paths}
