"""Every config option composes, the defaults are the paper's, and bad values fail in one line."""

from pathlib import Path

import pytest

from conftest import compose_config
from vae_cli.config import validate
from vae_cli.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["dataset", "model", "method", "estimator", "optimizer", "prior", "posterior", "trainer", "logger"]


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)


def test_defaults_are_the_papers_settings():
    """PAPER.md §6: M = 100, L = 1, Adagrad, N(0, 0.01) init, N(0, I) weight prior, hidden 500/200."""
    cfg = compose_config([])
    assert cfg.trainer.batch_size == 100 and cfg.estimator.n_samples == 1
    assert cfg.optimizer.name == "adagrad" and cfg.optimizer.lr in (0.01, 0.02, 0.1)
    assert cfg.model.init_std == 0.01 and cfg.prior.precision == 1.0
    assert cfg.dataset.name == "mnist" and list(cfg.model.hidden) == [500] and cfg.model.decoder == "bernoulli"
    assert cfg.model.latent_dim == 20 and cfg.dataset.binarize == "none"
    frey = compose_config(["dataset=frey"])
    assert list(frey.model.hidden) == [200] and frey.model.decoder == "gaussian_sigmoid"
    assert frey.dataset.train_frames == 1500
    assert list(compose_config(["dataset=frey", "model.hidden=[100]"]).model.hidden) == [100]


def test_sample_counts_accept_scientific_notation():
    assert int(compose_config(["trainer.max_samples=2e6"]).trainer.max_samples) == 2_000_000


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.batch_size=0", "trainer.batch_size=0 must be positive"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be positive"),
        ("trainer.max_samples=0", "trainer.max_samples=0.0 must be positive"),
        ("trainer.max_samples=1000.5", "whole number"),
        ("model.latent_dim=-3", "model.latent_dim=-3 must be positive"),
        ("model.hidden=[500,0]", "model.hidden=[500, 0]"),
        ("dataset.n_train=0", "dataset.n_train=0 must be positive"),
        ("dataset.binarize=sometimes", "dataset.binarize=sometimes is not one of none, static, dynamic"),
        ("device=tpu", "device=tpu is not one of auto, cpu, cuda"),
        ("prior.precision=-1", "prior.precision=-1.0 must be >= 0"),
        ("+trainer.speed=3", "unknown config key 'trainer.speed'"),
        ("+colour=red", "unknown config key 'colour'"),
    ],
)
def test_out_of_range_values_fail_with_one_line_naming_the_key(override, needle):
    cfg = compose_config([override])
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_binarizing_a_gaussian_decoder_is_refused():
    with pytest.raises(UserError, match="needs a Bernoulli decoder"):
        validate(compose_config(["dataset=frey", "dataset.binarize=static"]))
