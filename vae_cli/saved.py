"""A trained run as its folder holds it: the config it ran with, its checkpoint, its model(s).

What `vae-eval`, `vae-report` and the Python API (`vae_cli.load_run`) read a run through. A checkpoint
is loaded with weights_only=True (no code runs); configs written by earlier versions are upgraded to
this version's names (`runs.upgrade_config`) and typed by the group schemas, so every model a run of
any version trained is rebuilt by the same `models.build_vae`. A run of a stack of K models
(`speed.n_models=K`) holds K models; `member=k` picks the one trained as seed s + k.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from .config import typed_config
from .data import Dataset, load_dataset
from .errors import UserError
from .models import VAE, build_vae
from .runs import CHECKPOINT_FILE, MODEL_FORMATS, load_checkpoint, upgrade_config


def read_checkpoint(run_dir: Path, device: torch.device) -> tuple[DictConfig, dict]:
    """The run's config (upgraded and typed) and its checkpoint's state, checked."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; point at a vae-train run folder (outputs/<date>/<time>)")
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, map_location=device, formats=MODEL_FORMATS)
    config = state.get("config")
    if not isinstance(state.get("model"), dict) or not isinstance(config, dict) or not {"model", "dataset"} <= config.keys():
        raise UserError(f"{path} lacks the saved config or model weights; point at a run written by vae-train")
    return typed_config(upgrade_config(config)), state


def n_models(cfg: DictConfig) -> int:
    return cfg.speed.n_models


def member_weights(cfg: DictConfig, state: dict, member: int) -> dict[str, torch.Tensor]:
    """The weights of model `member` of the checkpoint: the whole `model` of a one-model run."""
    k = n_models(cfg)
    if k == 1 and member:
        raise UserError(f"member={member} picks a model of a run trained with speed.n_models>1; this run holds one model: use member=0")
    if not 0 <= member < k:
        raise UserError(f"member={member} is not a model of this run's stack of {k} (speed.n_models={k}); choose member= from 0 to {k - 1}")
    return state["model"] if k == 1 else {name: t[member] for name, t in state["model"].items()}


def rebuild_model(cfg: DictConfig, state: dict, data_dim: int, device: torch.device, member: int = 0) -> VAE:
    """The run's VAE (model `member` of a stack) from its config and weights, frozen for evaluation."""
    weights = member_weights(cfg, state, member)
    try:
        model = build_vae(data_dim, cfg.model, torch.Generator())
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint's weights do not fit its saved model config ({str(e).splitlines()[0][:120]}); "
                        "use the vae-cli version that wrote the run") from None
    return model.to(device).eval().requires_grad_(False)


def load_data(cfg: DictConfig, device: torch.device, root: str | None = None, split: str = "test") -> Dataset:
    """The run's data set (its own split and binarization), from `root` if given, else where it was.
    `split=valid` reads MNIST's validation images as the test set."""
    dataset = cfg.dataset.copy()
    if root is not None:
        dataset.root = root
    if split == "valid" and dataset.name != "mnist":
        raise UserError(f"{dataset.name} has no valid split; choose split=train or split=test")
    if dataset.name == "mnist":
        dataset.test_split = "valid" if split == "valid" else "test"
    return load_dataset(dataset, device)


def posterior_draws(cfg: DictConfig, state: dict, model: VAE, theta_draws: int, generator: torch.Generator) -> tuple[list[VAE], str | None]:
    """The model as trained, or for a full-VB run theta at q(theta)'s mean or `theta_draws` draws theta ~ q."""
    if cfg.method.name != "full_vb":
        if theta_draws:
            raise UserError(f"theta_draws={theta_draws} applies to method=full_vb runs; this run was trained with "
                            f"method={cfg.method.name}: leave theta_draws=0")
        return [model], None
    if not theta_draws:
        return [model], "mean"
    from .full_vb import decoder_draws, posterior_from_checkpoint

    posterior = posterior_from_checkpoint(model, state)
    return list(decoder_draws(model, posterior, theta_draws, generator)), f"q_draws:{theta_draws}"
