"""Typed schemas of the config groups in `conf/`, and the checks Hydra's types cannot express.

Each group of `conf/` (dataset, model, method, estimator, optimizer, prior, posterior, trainer, logger) has a
dataclass here; `conf/train.yaml` composes onto `TrainConfig`, so a misspelt key or a value of the
wrong type fails at composition with the key's name. `validate` then checks ranges (positive sizes,
rates and budgets; names that pick an implementation) and raises a one-line `UserError`.
Sample counts are floats so that `trainer.max_samples=2e6` works from the command line.

`conf/eval.yaml` (vae-eval) composes onto `EvalConfig`; each option of its `likelihood` group has
the settings dataclass of its estimator (`marginal_likelihood.py`) plus a `name`, and
`validate_eval` checks it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from .errors import UserError
from .marginal_likelihood import SETTINGS


@dataclass
class DatasetConfig:
    name: str = "mnist"  # mnist | frey
    root: Optional[str] = None  # folder with the files; null: $VAE_CLI_DATA, else the user cache
    download: bool = True  # fetch the canonical files with pooch when absent
    binarize: str = "none"  # none (grey levels as Bernoulli targets, the paper) | static | dynamic
    binarize_seed: int = 0  # the fixed draw of static binarization and of the evaluation sets
    n_train: Optional[int] = None  # keep the first N training points (Fig. 3: 1000); null: all
    test_split: str = "test"  # MNIST: test | valid
    train_frames: int = 1500  # Frey Face: first frames train, the rest test (PAPER.md §10.3)
    hidden: List[int] = field(default_factory=lambda: [500])  # the paper's hidden units for this data
    decoder: str = "bernoulli"  # the paper's p(x|z) for this data: bernoulli | gaussian_sigmoid


@dataclass
class ModelConfig:
    name: str = "vae"  # vae | linear_gaussian
    latent_dim: int = 20  # J = N_z
    hidden: List[int] = II("dataset.hidden")  # hidden layer sizes of encoder and decoder
    decoder: str = II("dataset.decoder")  # bernoulli | gaussian | gaussian_sigmoid | linear_gaussian
    init_std: float = 0.01  # every parameter ~ N(0, init_std^2) (PAPER.md §6)
    decoder_min_log_var: Optional[float] = None  # clamp of a Gaussian decoder's log sigma^2; null: none


@dataclass
class MethodConfig:
    """The training algorithm; the HMC fields belong to `mcem` and stay null for the others."""

    name: str = "aevb"  # aevb | wake_sleep | mcem | full_vb (App. F)
    n_leapfrog: Optional[int] = None  # mcem: leapfrog steps of the HMC E-step per minibatch (AEVB App. E: 10)
    n_weight_updates: Optional[int] = None  # mcem: Adagrad updates of theta per minibatch (AEVB App. E: 5)
    target_accept: Optional[float] = None  # mcem: acceptance rate the step sizes adapt to (AEVB App. E: 0.9)
    init_step_size: Optional[float] = None  # mcem: every datapoint's HMC step size at the start
    jitter: Optional[float] = None  # mcem: each transition's step size is drawn from step x [1 - jitter, 1 + jitter]


MCEM_FIELDS = ("n_leapfrog", "n_weight_updates", "target_accept", "init_step_size", "jitter")
STACKED_METHODS = ("aevb", "wake_sleep")  # the methods trainer.n_models > 1 can stack (stacked.py)
COMPILED_METHODS = ("aevb", "wake_sleep")  # the methods whose updates trainer.compile=true compiles (compiled_update.py)


@dataclass
class EstimatorConfig:
    name: str = "sgvb_b"  # sgvb_a (eq. 6) | sgvb_b (eq. 7)
    n_samples: int = 1  # L, noise samples per datapoint (paper: 1)


@dataclass
class OptimizerConfig:
    name: str = "adagrad"  # adagrad | adam | sgd
    lr: float = 0.02  # global stepsize (paper: chosen from 0.01, 0.02, 0.1)
    eps: float = 1e-10  # Adagrad / Adam denominator term
    momentum: float = 0.0  # SGD only
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam only


@dataclass
class PriorConfig:
    precision: float = 1.0  # p(theta) = N(0, I / precision); the paper's MAP uses N(0, I)
    scope: str = "weights"  # weights (as [K]) | all | none


@dataclass
class PosteriorConfig:
    """q_phi(theta) of method=full_vb (AEVB App. F.1); unused by the other methods."""

    init_log_sigma: float = -5.0  # log sigma_theta of every decoder parameter at the start
    kl: str = "closed_form"  # closed_form (eq. 24) | monte_carlo (log p_alpha - log q at the drawn theta, eq. 21)
    eval_draws: int = 0  # train/test bounds: 0 at theta = q's mean; K > 0 averaged over K draws theta ~ q


@dataclass
class TrainerConfig:
    batch_size: int = 100  # M
    max_samples: float = 3e6  # budget in training samples evaluated (Fig. 2's x-axis)
    eval_schedule: str = "log"  # log (log-spaced, Fig. 2) | linear (every eval_every, Fig. 3)
    eval_per_decade: int = 4  # log schedule: evaluations per factor of ten
    eval_first: float = 1e4  # log schedule: first evaluation after the start
    eval_every: float = 1e6  # linear schedule: samples between evaluations
    eval_estimator: str = "sgvb_b"  # bound used for the train/test curves (PAPER.md §10.7)
    eval_n_samples: int = 1  # L of the evaluation
    eval_train_points: Optional[int] = None  # training points evaluated; null: all
    eval_test_points: Optional[int] = None  # test points evaluated; null: all
    eval_batch_size: int = 1000
    checkpoint_every: float = 1e6  # samples between checkpoints (one is always written at the end)
    resume: bool = False  # continue the run in hydra.run.dir from its last checkpoint
    on_existing: str = "refuse"  # the run folder holds a run: refuse | continue (skip if finished, else resume)
    progress: bool = True  # tqdm bar
    progress_every: int = 50  # steps between progress refreshes and host reads of the finiteness checks
    on_nan: str = "stop"  # a non-finite bound or gradient: stop (keep the last good checkpoint) | skip_batch
    threads: Optional[int] = None  # torch intra-op threads; null: torch's default
    figures: bool = True  # reconstructions and prior samples as PNG at the end
    track_loglik: bool = False  # log an App. D estimate of log p(x) at each evaluation (Fig. 3); always on for mcem
    loglik_points: int = 1000  # first training and test points of that estimate (AEVB App. E: 1000)
    n_models: int = 1  # K models of seeds s..s+K-1 trained as one stack (stacked.py); aevb and wake_sleep
    compile: bool = False  # torch.compile aevb's (and each wake-sleep phase's) whole update; numbers agree to rounding
    flush_denormals: bool = True  # CPU: subnormal floats (|v| < 1.2e-38) read and written as 0 (`train.configure_cpu`)


@dataclass
class LoggerConfig:
    name: str = "jsonl"  # jsonl (always written) | tensorboard (jsonl plus TensorBoard scalars)


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: Optional[str] = None  # set by an `experiment` preset; names its sweep folder
    scale_name: str = "full"  # set by the `scale` group: full | smoke
    seed: int = 0  # one seed for initialisation, data order and noise
    device: str = "auto"  # auto | cpu | cuda


def likelihood_schema(name: str, settings: type) -> type:
    """The schema of conf/likelihood/<name>.yaml: the estimator's settings plus the `name` that picks it."""
    return make_dataclass(f"{settings.__name__}Option", [("name", str, field(default=name))], bases=(settings,))


LIKELIHOOD_SCHEMAS = {name: likelihood_schema(name, settings) for name, settings in SETTINGS.items()}


@dataclass
class EvalDatasetConfig:
    root: Optional[str] = None  # folder with the data files; null: the run's own dataset.root


@dataclass
class EvalConfig:
    likelihood: Any = MISSING  # one option of conf/likelihood/
    run_dir: str = MISSING  # the vae-train run folder to evaluate
    split: str = "test"  # train | test | valid (MNIST only)
    n_points: Optional[int] = None  # the first n points of the split; null: all
    batch_size: int = 100  # datapoints an estimator call
    seed: int = 0  # the estimator's noise
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch intra-op threads; null: torch's default
    flush_denormals: bool = True  # CPU: subnormal floats read and written as 0 (`train.configure_cpu`)
    theta_draws: int = 0  # full-VB runs: 0 evaluates at theta = q(theta)'s mean; K averages over K draws theta ~ q
    member: int = 0  # stack runs (trainer.n_models=K): which model, 0..K-1 (trained as seed s + member)
    dataset: EvalDatasetConfig = field(default_factory=EvalDatasetConfig)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="eval_schema", node=EvalConfig)
    for name, schema in LIKELIHOOD_SCHEMAS.items():
        store.store(group="likelihood", name=f"{name}_schema", node=schema)


CHOICES = {
    "dataset.name": ("mnist", "frey"),
    "dataset.binarize": ("none", "static", "dynamic"),
    "dataset.test_split": ("test", "valid"),
    "model.name": ("vae", "linear_gaussian"),
    "model.decoder": ("bernoulli", "gaussian", "gaussian_sigmoid", "linear_gaussian"),
    "method.name": ("aevb", "wake_sleep", "mcem", "full_vb"),
    "posterior.kl": ("closed_form", "monte_carlo"),
    "estimator.name": ("sgvb_a", "sgvb_b"),
    "trainer.eval_estimator": ("sgvb_a", "sgvb_b"),
    "optimizer.name": ("adagrad", "adam", "sgd"),
    "prior.scope": ("weights", "all", "none"),
    "trainer.eval_schedule": ("log", "linear"),
    "trainer.on_nan": ("stop", "skip_batch"),
    "trainer.on_existing": ("refuse", "continue"),
    "logger.name": ("jsonl", "tensorboard"),
    "device": ("auto", "cpu", "cuda"),
}
POSITIVE = (
    "model.latent_dim", "model.init_std", "estimator.n_samples", "optimizer.lr", "optimizer.eps",
    "trainer.batch_size", "trainer.max_samples", "trainer.eval_per_decade", "trainer.eval_first",
    "trainer.eval_every", "trainer.eval_n_samples", "trainer.eval_batch_size",
    "trainer.checkpoint_every", "trainer.progress_every", "dataset.n_train", "dataset.train_frames",
    "trainer.eval_train_points", "trainer.eval_test_points", "trainer.threads", "trainer.loglik_points", "trainer.n_models",
    "method.n_leapfrog", "method.n_weight_updates", "method.init_step_size",
)
NON_NEGATIVE = ("prior.precision", "optimizer.momentum", "posterior.eval_draws")
WHOLE_NUMBERS = ("trainer.max_samples", "trainer.eval_first", "trainer.eval_every", "trainer.checkpoint_every")


def unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """Keys of `cfg` that `schema` does not declare (Hydra lets `+key=value` add them)."""
    declared = {f.name: f.default_factory for f in fields(schema)}  # nested groups: their dataclass
    unknown = []
    for key in cfg.keys():
        if key == "hydra" and not prefix:
            continue
        if key not in declared:
            unknown.append(prefix + str(key))
        elif is_dataclass(declared[key]):
            unknown += unknown_keys(cfg[key], declared[key], f"{prefix}{key}.")
    return unknown


def check_ranges(cfg: DictConfig, choices: dict, positive: tuple) -> None:
    """A one-line UserError for the first name outside its choices or non-positive size."""
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    for key, allowed in choices.items():
        if get(key) not in allowed:
            raise UserError(f"{key}={get(key)} is not one of {', '.join(allowed)}; set {key}=<one of them>")
    for key in positive:
        value = get(key)
        if value is not None and not value > 0:
            raise UserError(f"{key}={value} must be positive; set {key}= to a value above 0")


def validate(cfg: DictConfig, schema: type = TrainConfig, prog: str = "vae-train") -> None:
    """Raise a one-line UserError for the first out-of-range value, naming the key and a fix."""
    extra = unknown_keys(cfg, schema)
    if extra:
        raise UserError(f"unknown config key '{extra[0]}'; see the keys with `{prog} --cfg job`")
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    check_ranges(cfg, CHOICES, POSITIVE)
    for key in NON_NEGATIVE:
        if not get(key) >= 0:
            raise UserError(f"{key}={get(key)} must be >= 0")
    for key in WHOLE_NUMBERS:
        if float(get(key)) != int(get(key)):
            raise UserError(f"{key}={get(key)} must be a whole number of samples")
    if any(h <= 0 for h in cfg.model.hidden):
        raise UserError(f"model.hidden={list(cfg.model.hidden)} must hold positive layer sizes, e.g. model.hidden=[500]")
    if cfg.dataset.binarize != "none" and cfg.model.decoder != "bernoulli":
        raise UserError(f"dataset.binarize={cfg.dataset.binarize} needs a Bernoulli decoder; set dataset.binarize=none for {cfg.model.decoder}")
    if cfg.method.name == "full_vb" and cfg.prior.precision == 0:
        raise UserError("method=full_vb needs a proper hyperprior p_alpha(theta) for KL(q(theta) || p(theta)); set prior.precision= above 0 (paper: 1)")
    _validate_method(cfg.method)
    if cfg.trainer.compile and cfg.method.name not in COMPILED_METHODS:
        raise UserError(f"trainer.compile=true compiles the updates of {' and '.join(COMPILED_METHODS)}; "
                        f"method={cfg.method.name} trains eagerly: set trainer.compile=false")
    if cfg.trainer.n_models > 1 and cfg.method.name not in STACKED_METHODS:
        raise UserError(f"trainer.n_models={cfg.trainer.n_models} stacks {' and '.join(STACKED_METHODS)} runs only; for method={cfg.method.name} "
                        f"run the seeds as separate jobs: trainer.n_models=1 seed={','.join(str(cfg.seed + k) for k in range(cfg.trainer.n_models))} --multirun")
    if cfg.dataset.name == "frey" and cfg.dataset.test_split != "test":
        raise UserError("Frey Face has one held-out split; leave dataset.test_split=test and move dataset.train_frames instead")


def _validate_method(method: DictConfig) -> None:
    """The HMC fields are set exactly for mcem (conf/method/mcem.yaml sets them)."""
    for key in MCEM_FIELDS:
        value = method.get(key)
        if method.name == "mcem" and value is None:
            raise UserError(f"method=mcem needs method.{key}; select the preset with method=mcem (conf/method/mcem.yaml)")
        if method.name != "mcem" and value is not None:
            raise UserError(f"method.{key} is a setting of method=mcem only; drop it for method={method.name}")
    if method.name == "mcem" and not 0.0 < method.target_accept < 1.0:
        raise UserError(f"method.target_accept={method.target_accept} must lie between 0 and 1 (paper: 0.9)")
    if method.name == "mcem" and not 0.0 <= method.jitter < 1.0:
        raise UserError(f"method.jitter={method.jitter} must lie in [0, 1); 0 keeps the step size fixed")


def to_container(cfg: Any) -> dict:
    """The resolved config as plain Python containers (what run folders and checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


EVAL_CHOICES = {"split": ("train", "test", "valid"), "device": ("auto", "cpu", "cuda")}
LIKELIHOOD_CHOICES = {"likelihood.schedule": ("sigmoid", "linear"), "likelihood.density": ("gaussian", "diagonal")}
EVAL_POSITIVE = (
    "n_points", "batch_size", "threads", "likelihood.k", "likelihood.n_samples", "likelihood.chunk_size",
    "likelihood.n_steps", "likelihood.n_chains", "likelihood.n_leapfrog", "likelihood.sigmoid_radius",
    "likelihood.init_step_size", "likelihood.thin", "likelihood.cov_scale",
)


def validate_eval(cfg: DictConfig) -> None:
    """`validate` for vae-eval: known keys, the choices, positive sizes, probabilities in (0, 1)."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise UserError("run_dir is required; point it at a vae-train run folder, e.g. vae-eval run_dir=outputs/2026-11-25/10-00-00")
    schema = LIKELIHOOD_SCHEMAS[cfg.likelihood.name]
    extra = unknown_keys(cfg, EvalConfig) + unknown_keys(cfg.likelihood, schema, "likelihood.")
    if extra:
        raise UserError(f"unknown config key '{extra[0]}'; see the keys with `vae-eval run_dir=... --cfg job`")
    present = {k: v for k, v in LIKELIHOOD_CHOICES.items() if OmegaConf.select(cfg, k) is not None}
    check_ranges(cfg, {**EVAL_CHOICES, **present}, EVAL_POSITIVE)
    if cfg.theta_draws < 0:
        raise UserError(f"theta_draws={cfg.theta_draws} must be >= 0 (0: theta at q(theta)'s mean)")
    if cfg.member < 0:
        raise UserError(f"member={cfg.member} must be >= 0: model k = 0..K-1 of a run trained with trainer.n_models=K")
    if cfg.likelihood.name == "appendix_d" and cfg.likelihood.n_samples < 2:
        raise UserError("likelihood.n_samples must be at least 2 to fit q(z) (AEVB App. D); e.g. likelihood.n_samples=50")
    for key in ("likelihood.target_accept",):
        value = OmegaConf.select(cfg, key)
        if value is not None and not 0 < value < 1:
            raise UserError(f"{key}={value} must lie strictly between 0 and 1")
