"""Every config option composes, the defaults are the paper's (and the author's code where the paper is
silent), `reading=paper_text` reads the text literally, and bad values fail in one line."""

from pathlib import Path

import pytest
import yaml

from conftest import compose_config
from vae_cli.cli import describe_user_error
from vae_cli.config import to_container, validate
from vae_cli.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["dataset", "model", "method", "estimator", "optimizer", "trainer", "logger", "experiment", "hparams_search", "scale"]


def test_groups_are_the_config_groups_of_train_yaml():
    """GROUPS (every option of which is composed below) lists every group vae-train's defaults name."""
    defaults = yaml.safe_load((CONF / "train.yaml").read_text())["defaults"]
    named = {next(iter(d)) for d in defaults if isinstance(d, dict) and not next(iter(d)).startswith("override ")}
    assert named == set(GROUPS)
    assert all(list((CONF / g).glob("*.yaml")) for g in GROUPS)


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)
    to_container(cfg)  # every interpolation resolves


def test_defaults_are_the_papers_settings():
    """PAPER.md §6: M = 100, L = 1, Adagrad, N(0, 0.01^2) init, N(0, I) weight prior, hidden 500/200."""
    cfg = compose_config([])
    assert cfg.trainer.batch_size == 100 and cfg.estimator.n_samples == 1 and cfg.estimator.name == "sgvb_b"
    assert cfg.optimizer.name == "adagrad" and cfg.optimizer.lr in (0.01, 0.02, 0.1)
    assert cfg.model.init_std == 0.01 and cfg.prior.precision == 1.0 and cfg.prior.scope == "weights"
    assert cfg.dataset.name == "mnist" and list(cfg.model.hidden) == [500] and cfg.model.decoder == "bernoulli"
    assert cfg.model.latent_dim == 20 and cfg.dataset.binarize == "none" and cfg.method.name == "aevb"
    frey = compose_config(["dataset=frey"])
    assert list(frey.model.hidden) == [200] and frey.model.decoder == "gaussian_sigmoid"
    assert list(compose_config(["dataset=frey", "model.hidden=[100]"]).model.hidden) == [100]
    assert compose_config(["dataset=frey", "model.decoder=gaussian"]).model.decoder == "gaussian"


def test_where_the_paper_is_silent_the_defaults_are_the_authors_code():
    """PAPER.md §12 (reading=author_code): Adagrad's warm-up of 10 steps and 1e-8 accumulator, q(z|x)'s
    log-variance head scaled by 0.1 and zero at the start, minibatches with replacement, Frey Face's
    shuffled 1600 / 365 split and the author's 2014 Frey decoder (a per-pixel variance mixed with U(0, 1),
    PAPER.md §12.6) at the stepsize the paper's rule picks for it (0.1; MNIST: 0.02)."""
    cfg = compose_config([])
    assert cfg.reading == "author_code"
    assert cfg.optimizer.warmup_steps == 10 and cfg.optimizer.initial_accumulator_value == 1e-8
    assert cfg.model.encoder_log_var_scale == 0.1 and cfg.model.encoder_log_var_init == "zero"
    assert cfg.trainer.minibatches == "with_replacement"
    frey = compose_config(["dataset=frey"])
    assert frey.dataset.split == "shuffled" and frey.dataset.train_frames == 1600
    assert frey.model.decoder_variance == "per_pixel" and frey.model.decoder_uniform_mixture
    assert cfg.optimizer.lr == 0.02 and frey.optimizer.lr == 0.1
    assert compose_config(["dataset=frey", "optimizer=adam"]).optimizer.lr == 1e-3  # the rule's stepsizes are Adagrad's


def test_paper_text_reads_the_paper_literally():
    """reading=paper_text: plain Adagrad, eq. (12) as written for q(z|x), epochs, Frey's sequential 1500 / 465."""
    cfg = compose_config(["reading=paper_text"])
    assert cfg.optimizer.warmup_steps == 0 and cfg.optimizer.initial_accumulator_value == 0.0
    assert cfg.model.encoder_log_var_scale == 1.0 and cfg.model.encoder_log_var_init == "random"
    assert cfg.trainer.minibatches == "epochs"
    frey = compose_config(["reading=paper_text", "dataset=frey"])
    assert frey.dataset.split == "sequential" and frey.dataset.train_frames == 1500
    assert frey.model.decoder_variance == "data_dependent" and not frey.model.decoder_uniform_mixture  # eq. (12)'s decoder
    assert frey.optimizer.lr == 0.02
    same = ("batch_size", "max_samples", "checkpoint_every")
    assert all(cfg.trainer[k] == compose_config([]).trainer[k] for k in same)  # the paper's settings stay
    assert cfg.model.init_std == 0.01 and cfg.optimizer.lr == compose_config([]).optimizer.lr
    saved = to_container(frey)  # what config.yaml stores: the resolved values, not the interpolations
    assert saved["optimizer"]["warmup_steps"] == 0 and saved["dataset"]["split"] == "sequential"
    assert saved["model"]["encoder_log_var_init"] == "random" and saved["trainer"]["minibatches"] == "epochs"


@pytest.mark.parametrize(
    "overrides,key,value",
    [
        (["reading=paper_text", "optimizer.warmup_steps=100"], "optimizer.warmup_steps", 100),
        (["reading=paper_text", "optimizer.initial_accumulator_value=1e-8"], "optimizer.initial_accumulator_value", 1e-8),
        (["reading=paper_text", "model.encoder_log_var_scale=0.1"], "model.encoder_log_var_scale", 0.1),
        (["reading=paper_text", "model.encoder_log_var_init=zero"], "model.encoder_log_var_init", "zero"),
        (["reading=paper_text", "trainer.minibatches=with_replacement"], "trainer.minibatches", "with_replacement"),
        (["reading=paper_text", "dataset=frey", "dataset.split=shuffled"], "dataset.split", "shuffled"),
        (["reading=paper_text", "dataset=frey", "dataset.train_frames=1600"], "dataset.train_frames", 1600),
        (["optimizer.warmup_steps=0"], "optimizer.warmup_steps", 0),
        (["model.encoder_log_var_init=random"], "model.encoder_log_var_init", "random"),
        (["trainer.minibatches=epochs"], "trainer.minibatches", "epochs"),
        (["dataset=frey", "dataset.split=sequential"], "dataset.split", "sequential"),
    ],
)
def test_each_reading_key_can_be_overridden_on_its_own(overrides, key, value):
    cfg = compose_config(overrides)
    validate(cfg)
    group, name = key.split(".")
    assert cfg[group][name] == value
    other = compose_config(overrides[:-1])  # the same reading without the override: every other key as it was
    changed = {(g, k) for g in ("dataset", "model", "optimizer", "trainer") for k in cfg[g] if cfg[g][k] != other[g][k]}
    assert changed == {(group, name)}


def test_the_tensorboard_logger_is_a_switch_and_jsonl_is_always_written():
    assert compose_config([]).logger.tensorboard is False
    assert compose_config(["logger=tensorboard"]).logger.tensorboard is True


def test_sample_counts_accept_scientific_notation():
    assert int(compose_config(["trainer.max_samples=2e6"]).trainer.max_samples) == 2_000_000


def _one_line(overrides: list[str]) -> str:
    """The one line vae-train would print for these overrides, whether composition or `validate` refuses them."""
    try:
        validate(compose_config(overrides))
    except Exception as exc:  # noqa: BLE001 - what the console script would classify
        message = describe_user_error(exc)
        assert message is not None, f"{type(exc).__name__} is not reported as a user mistake: {exc}"
        return message
    pytest.fail(f"{overrides} were accepted")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.batch_size=0", "trainer.batch_size=0 must be positive; set trainer.batch_size= to such a value"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be positive"),
        ("trainer.max_samples=0", "trainer.max_samples=0.0 must be a positive whole number of samples"),
        ("trainer.max_samples=1000.5", "trainer.max_samples=1000.5 must be a positive whole number of samples"),
        ("model.latent_dim=-3", "model.latent_dim=-3 must be positive"),
        ("model.hidden=[500,0]", "model.hidden=[500, 0] must hold positive layer sizes"),
        ("dataset.n_train=0", "dataset.n_train=0 must be positive"),
        ("dataset.binarize=sometimes", "dataset.binarize: Invalid value 'sometimes', expected one of [none, static, dynamic]"),
        ("device=tpu", "device=tpu is not one of auto, cpu, cuda"),
        ("prior.precision=-1", "prior.precision=-1.0 must be >= 0"),
        ("reading=paper", "reading: Invalid value 'paper', expected one of [author_code, paper_text]"),
        ("optimizer.warmup_steps=-1", "optimizer.warmup_steps=-1 must be >= 0"),
        ("optimizer.initial_accumulator_value=-1", "optimizer.initial_accumulator_value=-1.0 must be >= 0"),
        ("model.encoder_log_var_scale=0", "model.encoder_log_var_scale=0.0 must be positive"),
        ("model.encoder_log_var_init=ones", "model.encoder_log_var_init: Invalid value 'ones', expected one of [random, zero]"),
        ("trainer.minibatches=shuffled", "trainer.minibatches: Invalid value 'shuffled', expected one of [with_replacement, epochs]"),
        ("trainer.on_existing=continue", "trainer.on_existing: Invalid value 'continue', expected one of [refuse, resume]"),
        ("evaluation.per_decade=0", "evaluation.per_decade=0 must be positive"),
        ("evaluation.first=0", "evaluation.first=0.0 must be a positive whole number of samples"),
        ("speed.n_models=0", "speed.n_models=0 must be positive"),
        ("trainer.speed=3", "unknown config key 'trainer.speed'"),
        ("+trainer.speed=3", "unknown config key 'trainer.speed'"),
        ("+colour=red", "unknown config key 'colour'"),
    ],
)
def test_out_of_range_values_fail_with_one_line_naming_the_key(override, needle):
    message = _one_line([override])
    assert needle in message and "\n" not in message


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["dataset=frey", "dataset.train_frames=0"], "dataset.train_frames=0 must be positive"),
        (["dataset=frey", "dataset.split=random"], "dataset.split: Invalid value 'random', expected one of [shuffled, sequential]"),
        (["method=mcem", "method.target_accept=1"], "method.target_accept=1.0 must lie strictly between 0 and 1"),
        (["method=full_vb", "method.eval_draws=-1"], "method.eval_draws=-1 must be >= 0"),
        (["method=full_vb", "prior.precision=0"], "method=full_vb needs a proper hyperprior"),
        (["method=mcem", "speed.compile=true"], "speed.compile=true: method=mcem trains eagerly only"),
        (["method=mcem", "speed.n_models=2"], "speed.n_models=2: method=mcem cannot be stacked; run the seeds as separate jobs: "
                                              "speed.n_models=1 seed=0,1 --multirun"),
        (["optimizer=sgd", "optimizer.momentum=-0.5"], "optimizer.momentum=-0.5 must be >= 0"),
    ],
)
def test_option_keys_are_checked_by_their_options_schema(overrides, needle):
    message = _one_line(overrides)
    assert needle in message and "\n" not in message


def test_binarizing_a_gaussian_decoder_is_refused():
    with pytest.raises(UserError, match="needs a Bernoulli decoder"):
        validate(compose_config(["model.decoder=gaussian", "dataset.binarize=static"]))
    assert "unknown config key 'dataset.binarize'" in _one_line(["dataset=frey", "dataset.binarize=static"])  # MNIST's key only
