"""Shared fixtures: the real data folder (skip with a reason when absent) and composed configs."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker (and its console scripts): no oversubscribed cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module

from vae_cli.config import register_configs

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """$VAE_CLI_DATA, else ../shared/data beside the checkout, if it holds the data files."""
    candidates = [os.environ.get("VAE_CLI_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "mnist.pkl.gz").is_file() and (Path(c) / "freyfaces.pkl").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real data absent: set VAE_CLI_DATA to a folder with mnist.pkl.gz and freyfaces.pkl (../shared/data)")
    return root


def compose_config(overrides: list[str], config_name: str = "train"):
    """The config `vae-train` would run with these command-line overrides."""
    register_configs()
    with initialize_config_module(config_module="vae_cli.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)
