"""Golden runs: small runs of every method whose metrics and final weights were recorded once, so a
change that alters what a configuration computes (the data order, a draw, the objective, an update)
fails here. On a machine with the recording's torch version and CPU capability the comparison is
exact (bit for bit); elsewhere matrix kernels round differently, and the bounds must agree to 1e-3
nats and the weights' sums to 1e-3 relative, far below what another draw or another update changes.

Regenerate after an intended change with VAE_CLI_GOLDEN=write pytest tests/test_golden.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from vae_cli.runs import CHECKPOINT_FILE, WALL_CLOCK_FIELDS, load_checkpoint, read_metrics
from vae_cli.jobs.train import train

GOLDEN = Path(__file__).parent / "golden"
SMALL = ["trainer.max_samples=3e3", "evaluation.schedule=linear", "evaluation.every=1e3", "trainer.checkpoint_every=1e3",
         "evaluation.train_points=300", "evaluation.test_points=300", "trainer.progress=false", "trainer.figures=false",
         "model.hidden=[32]", "model.latent_dim=4"]
AUTHOR = ["model.encoder_log_var_scale=0.1", "model.encoder_log_var_init=zero", "optimizer.initial_accumulator_value=1e-8",
          "optimizer.warmup_steps=10", "trainer.minibatches=with_replacement"]
PAPER = ["reading=paper_text", "model.encoder_log_var_scale=1.0", "model.encoder_log_var_init=random", "optimizer.initial_accumulator_value=0.0",
         "optimizer.warmup_steps=0", "trainer.minibatches=epochs"]
RUNS = {
    "aevb_paper": ["dataset.n_train=1000", *PAPER],
    "aevb_author": ["dataset.n_train=1000", "estimator=sgvb_a", *AUTHOR],
    "wake_sleep_paper": ["method=wake_sleep", "dataset.n_train=1000", *PAPER],
    "wake_sleep_author": ["method=wake_sleep", "dataset.n_train=1000", *AUTHOR],
    "mcem": ["method=mcem", "dataset.n_train=500", "model.latent_dim=2", "evaluation.loglik_points=20", *PAPER],
    "full_vb_frey": ["method=full_vb", "dataset=frey", "dataset.split=sequential", "dataset.train_frames=1500", *PAPER],
    "aevb_frey_per_pixel": ["dataset=frey", "dataset.split=shuffled", "dataset.train_frames=1600", "model.decoder_variance=per_pixel",
                            "model.decoder_uniform_mixture=true", "optimizer.lr=0.1", *AUTHOR],
    "wake_sleep_frey_mixture": ["method=wake_sleep", "dataset=frey", "dataset.split=shuffled", "dataset.train_frames=1600",
                                "model.decoder_variance=data_dependent", "model.decoder_uniform_mixture=true", "optimizer.lr=0.02", *AUTHOR],
}


def fingerprint(run: Path) -> dict:
    """The metrics rows (bar wall-clock fields) and each final weight tensor's sha256 and sum."""
    model = load_checkpoint(run / CHECKPOINT_FILE)["model"]
    return {
        "metrics": [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in read_metrics(run)],
        "sha256": {k: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for k, t in model.items()},
        "sums": {k: t.double().sum().item() for k, t in model.items()},
    }


def machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_golden_run_computes_what_it_computed_when_recorded(tmp_path, shared_data, name):
    torch.set_num_threads(1)
    cfg = compose_config([f"dataset.root={shared_data}", *SMALL, *RUNS[name]])
    train(cfg, run_dir=tmp_path / name)
    got, path = fingerprint(tmp_path / name), GOLDEN / f"{name}.json"
    if os.environ.get("VAE_CLI_GOLDEN") == "write":
        path.write_text(json.dumps({"machine": machine(), "overrides": RUNS[name], **got}, indent=1) + "\n")
        pytest.skip(f"wrote {path}")
    golden = json.loads(path.read_text())
    assert [r["samples"] for r in got["metrics"]] == [r["samples"] for r in golden["metrics"]]
    if golden["machine"] == machine():
        assert got["metrics"] == golden["metrics"]
        assert got["sha256"] == golden["sha256"]
        return
    for ours, theirs in zip(got["metrics"], golden["metrics"]):
        for key, value in theirs.items():
            if isinstance(value, float):
                assert ours[key] == pytest.approx(value, abs=1e-3), (ours["samples"], key)
            else:
                assert ours[key] == value, (ours["samples"], key)
    assert got["sums"] == pytest.approx(golden["sums"], rel=1e-3)
