"""Small models with known answers, shared by the math tests, and short training runs on real data."""

from __future__ import annotations

import torch

from types import SimpleNamespace

from conftest import compose_config
from vae_cli.jobs.train import train
from vae_cli import models
from vae_cli.runs import WALL_CLOCK_FIELDS, load_checkpoint, read_metrics

SHORT = ["evaluation.train_points=1000", "evaluation.test_points=1000", "trainer.progress=false", "trainer.figures=false"]


def model_spec(latent_dim: int, hidden, decoder: str, init_std: float, **choices) -> SimpleNamespace:
    """What `models.build_vae` reads of the `model` config group, with eq. (12) as written unless
    `choices` say otherwise (encoder_log_var_scale, encoder_log_var_init, decoder_variance, ...)."""
    spec = {"latent_dim": latent_dim, "hidden": list(hidden), "decoder": decoder, "init_std": init_std, "encoder_log_var_scale": 1.0,
            "encoder_log_var_init": "random", "decoder_variance": "data_dependent", "decoder_uniform_mixture": False,
            "decoder_min_log_var": None}
    return SimpleNamespace(**{**spec, **choices})


def build_vae(data_dim: int, latent_dim: int, hidden, decoder: str, init_std: float, generator, **choices):
    """`models.build_vae` from positional model settings (the tests' shorthand)."""
    return models.build_vae(data_dim, model_spec(latent_dim, hidden, decoder, init_std, **choices), generator)


def run_training(tmp_path, name, *overrides, data_root):
    """`train` in tmp_path/name with the given overrides on short evaluations: (summary, metrics rows)."""
    cfg = compose_config([f"dataset.root={data_root}", *SHORT, *overrides])
    summary = train(cfg, run_dir=tmp_path / name)
    return summary, read_metrics(tmp_path / name)


def without_wall_clock(rows):
    """Metrics rows without the fields that differ between identical runs."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in rows]


def straight_and_resumed(tmp_path, *overrides, data_root) -> tuple[dict, dict]:
    """6000 samples in one run, and 3000 then resumed to 6000: check that the models and the metrics
    (of every model of a stack) agree exactly; return both final checkpoints for further checks."""
    run_training(tmp_path, "straight", "trainer.max_samples=6e3", *overrides, data_root=data_root)
    run_training(tmp_path, "split", "trainer.max_samples=3e3", *overrides, data_root=data_root)
    run_training(tmp_path, "split", "trainer.max_samples=6e3", "trainer.on_existing=resume", *overrides, data_root=data_root)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["progress"]["samples"] == b["progress"]["samples"] == 6000
    straight = {(r["samples"], r.get("model")): r for r in without_wall_clock(read_metrics(tmp_path / "straight"))}
    split = {(r["samples"], r.get("model")): r for r in without_wall_clock(read_metrics(tmp_path / "split"))}
    assert all(split[key] == row for key, row in straight.items())  # split adds the rows at 3000
    return a, b


def linear_gaussian_vae(data_dim: int, latent_dim: int, seed: int, noise_var: float = 0.5):
    """A linear-Gaussian model (double precision) with random W, b and isotropic noise, and a
    linear encoder; returns (model, generator)."""
    g = torch.Generator().manual_seed(seed)
    model = build_vae(data_dim, latent_dim, [], "linear_gaussian", 0.01, g).double()
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64))
        model.decoder.linear.bias.copy_(torch.randn(data_dim, generator=g, dtype=torch.float64))
        model.decoder.log_var.fill_(torch.log(torch.tensor(noise_var)).item())
    return model, g


def set_exact_posterior_encoder(model) -> None:
    """Make the linear encoder output the exact Gaussian posterior p(z|x) of a linear-Gaussian model
    whose W has orthogonal columns and whose noise is isotropic (then the posterior is diagonal)."""
    W, b = model.decoder.linear.weight.double(), model.decoder.linear.bias.double()
    s2 = torch.exp(model.decoder.log_var[0]).double()
    posterior_var = 1.0 / (1.0 + (W**2).sum(0) / s2)  # diag of (I + W^T W / s^2)^-1
    gain = posterior_var[:, None] * W.T / s2  # mean = gain (x - b)
    out = model.encoder.net.out
    J = W.shape[1]
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:J] = gain
        out.bias[:J] = -gain @ b
        out.bias[J:] = torch.log(posterior_var)


def orthogonal_columns(model, seed: int) -> None:
    """Replace W by a matrix with orthogonal columns of different lengths."""
    D, J = model.decoder.linear.weight.shape
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, J, generator=g, dtype=torch.float64))
    with torch.no_grad():
        model.decoder.linear.weight.copy_(Q * torch.linspace(0.5, 2.0, J, dtype=torch.float64))
