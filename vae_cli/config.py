"""Typed schemas of the config groups in `conf/`: the one home of every default and every choice.

Each group option has a dataclass here (registered with Hydra's ConfigStore as `<group>/<option>_schema`),
so a misspelt key or a wrong type fails at composition, and a choice outside its `Enum` fails with the
valid values listed. What a type cannot say (a size must be positive, a rate lie in (0, 1)) sits in the
field's metadata and `validate` checks it; the few checks across fields follow. The YAML files of
`conf/` hold usage comments and the values of the paper's presets, not the defaults.

Where the paper is silent, the defaults follow the author's own code, `reading=author_code` (PAPER.md
§12); `reading=paper_text` takes the paper's text literally instead (plain Adagrad, eq. (12) as written,
epoch-wise minibatches, Frey Face's sequential split). The resolver `${by_reading:a,b}` picks a (author's
code) or b (paper's text); the saved config.yaml holds the resolved values.
"""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from .errors import UserError


def check(default, rule: str):
    """A field whose value must satisfy `rule`: positive | non_negative | probability | whole."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"check": rule})
    return field(default=default, metadata={"check": rule})


class Reading(str, Enum):
    author_code = "author_code"  # what the author's code does where the paper is silent (PAPER.md §12)
    paper_text = "paper_text"  # the paper's text read literally (PAPER.md §10's first defaults)


class Binarize(str, Enum):
    none = "none"  # grey levels as Bernoulli targets (the paper, PAPER.md §10.1)
    static = "static"  # one fixed Bernoulli draw of the pixels
    dynamic = "dynamic"  # a fresh draw of every minibatch


class MnistSplit(str, Enum):
    test = "test"  # MNIST's 10,000 test images
    valid = "valid"  # the last 10,000 of the 60,000 training images


class FreySplit(str, Enum):
    shuffled = "shuffled"  # frames in a seeded random order, then train / held out ([K14], PAPER.md §12.4)
    sequential = "sequential"  # the first frames of the video train, the rest held out (PAPER.md §10.3)


@dataclass
class DatasetConfig:
    name: str = "mnist"
    root: Optional[str] = None  # folder with the data files; null: $VAE_CLI_DATA, else the user cache
    download: bool = True  # fetch the canonical files with pooch when absent
    n_train: Optional[int] = check(None, "positive")  # keep the first N training points (Fig. 3: 1000); null: all


@dataclass
class MnistConfig(DatasetConfig):
    binarize: Binarize = Binarize.none
    binarize_seed: int = 0  # the fixed draw of static binarization and of the evaluation sets
    test_split: MnistSplit = MnistSplit.test


@dataclass
class FreyConfig(DatasetConfig):
    name: str = "frey"
    split: FreySplit = II("by_reading:shuffled,sequential")
    train_frames: int = check(II("by_reading:1600,1500"), "positive")  # frames in the training set ([K14]: 1600; [R:y0ast]: 1500)
    split_seed: int = 0  # the shuffle of split=shuffled


class Decoder(str, Enum):
    bernoulli = "bernoulli"  # App. C eq. (11): binary (or grey-level) data
    gaussian = "gaussian"  # App. C eq. (12)
    gaussian_sigmoid = "gaussian_sigmoid"  # eq. (12) with the mean squashed into (0, 1): Frey Face (AEVB §5)
    linear_gaussian = "linear_gaussian"  # N(Wz + b, diag(sigma^2)): exact log p(x)


class Variance(str, Enum):
    data_dependent = "data_dependent"  # log sigma^2 = W5 h + b5, eq. (12)
    per_pixel = "per_pixel"  # one learned constant per pixel ([K14], PAPER.md §12.6)


class HeadInit(str, Enum):
    random = "random"  # like every other parameter
    zero = "zero"  # q(z|x) starts at sigma = 1 (PAPER.md §12.2)


@dataclass
class ModelConfig:
    name: str = "vae"
    latent_dim: int = check(20, "positive")  # J = N_z
    hidden: List[int] = II("paper:hidden")  # tanh hidden layers of encoder and decoder (paper: [500] MNIST, [200] Frey)
    decoder: Decoder = II("paper:decoder")  # p(x|z) (paper: bernoulli for MNIST, gaussian_sigmoid for Frey)
    init_std: float = check(0.01, "positive")  # every parameter ~ N(0, init_std^2) (PAPER.md §6)
    encoder_log_var_scale: float = check(II("by_reading:0.1,1.0"), "positive")  # log sigma^2 = s (W5 h) + b5 of q(z|x) (PAPER.md §12.2)
    encoder_log_var_init: HeadInit = II("by_reading:zero,random")  # W5, b5 of q(z|x) at the start (PAPER.md §12.2)
    decoder_variance: Variance = Variance.data_dependent  # a Gaussian p(x|z)'s log sigma^2 (PAPER.md §12.6)
    decoder_uniform_mixture: bool = False  # mix a Gaussian p(x|z) with U(0, 1) per pixel (PAPER.md §12.6)
    decoder_min_log_var: Optional[float] = None  # floor of a Gaussian p(x|z)'s log sigma^2 (PAPER.md §10.9); null: none


@dataclass
class MethodConfig:
    name: str = "aevb"


@dataclass
class MCEMConfig(MethodConfig):
    name: str = "mcem"
    n_leapfrog: int = check(10, "positive")  # leapfrog steps of the HMC E-step per minibatch (AEVB App. E)
    n_weight_updates: int = check(5, "positive")  # updates of theta per minibatch (AEVB App. E)
    target_accept: float = check(0.9, "probability")  # acceptance the step sizes adapt to (AEVB App. E)
    init_step_size: float = check(0.1, "positive")  # every chain's step size at the start (PAPER.md §10.11)
    jitter: float = check(0.2, "non_negative")  # step size drawn from step x [1 - jitter, 1 + jitter] per transition (hmc.py)


class KLForm(str, Enum):
    closed_form = "closed_form"  # -KL(q(theta) || p(theta)) in closed form, eq. (24)
    monte_carlo = "monte_carlo"  # log p_alpha(theta~) - log q(theta~) at the draw, eq. (21)


@dataclass
class FullVBConfig(MethodConfig):
    name: str = "full_vb"
    init_log_sigma: float = -5.0  # log sigma_theta of every decoder parameter of q(theta) at the start
    kl: KLForm = KLForm.closed_form
    eval_draws: int = check(0, "non_negative")  # train/test bounds: 0 at theta = q's mean; K averaged over K draws


class EstimatorName(str, Enum):
    sgvb_a = "sgvb_a"  # eq. (6)
    sgvb_b = "sgvb_b"  # eq. (7)/(10)


@dataclass
class EstimatorConfig:
    name: EstimatorName = EstimatorName.sgvb_b
    n_samples: int = check(1, "positive")  # L (paper: 1 with M = 100)


@dataclass
class OptimizerConfig:
    name: str = "adagrad"
    lr: float = check(0.02, "positive")  # global stepsize (paper: chosen from 0.01, 0.02, 0.1)
    warmup_steps: int = check(0, "non_negative")  # updates that accumulate statistics, moving no parameter (PAPER.md §12.1)


@dataclass
class AdagradConfig(OptimizerConfig):
    lr: float = check(0.02, "positive")
    eps: float = check(1e-10, "positive")  # added to the root of the accumulator (PyTorch's)
    initial_accumulator_value: float = check(II("by_reading:1e-8,0.0"), "non_negative")  # 1e-8: [K]'s 1e-8 inside the root
    warmup_steps: int = check(II("by_reading:10,0"), "non_negative")  # [K]: 10 (2013 AEVB) (PAPER.md §12.1)


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    lr: float = check(1e-3, "positive")
    eps: float = check(1e-8, "positive")
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = check(0.1, "positive")
    momentum: float = check(0.0, "non_negative")


class PriorScope(str, Enum):
    weights = "weights"  # weight matrices of encoder and decoder, as [K]
    all = "all"  # biases and noise vectors too
    none = "none"  # no prior: maximum likelihood


@dataclass
class PriorConfig:
    precision: float = check(1.0, "non_negative")  # p(theta) = N(0, I / precision) (paper: N(0, I))
    scope: PriorScope = PriorScope.weights


class Minibatches(str, Enum):
    with_replacement = "with_replacement"  # M indices drawn uniformly each step ([K], PAPER.md §12.3)
    epochs = "epochs"  # slices of a new permutation each epoch (PAPER.md §10.8)


class OnNaN(str, Enum):
    stop = "stop"  # stop, keeping the last good checkpoint
    skip_batch = "skip_batch"  # skip that update and count it


class OnExisting(str, Enum):
    refuse = "refuse"  # a folder that holds a run is never written into
    resume = "resume"  # resume it (finished: nothing to do); how a relaunched sweep continues


@dataclass
class TrainerConfig:
    batch_size: int = check(100, "positive")  # M
    max_samples: float = check(3e6, "whole")  # budget in training samples evaluated (Fig. 2's x-axis)
    minibatches: Minibatches = II("by_reading:with_replacement,epochs")
    checkpoint_every: float = check(1e6, "whole")  # samples between checkpoints (one is always written at the end)
    on_nan: OnNaN = OnNaN.stop  # a non-finite bound or gradient
    on_existing: OnExisting = OnExisting.refuse  # the run folder holds a run
    progress: bool = True  # tqdm bar
    progress_every: int = check(50, "positive")  # steps between bar refreshes (and host reads of the guard)
    figures: bool = True  # reconstructions and prior samples as PNG at the end


class Schedule(str, Enum):
    log = "log"  # log-spaced (Fig. 2)
    linear = "linear"  # every `every` samples (Fig. 3)


@dataclass
class EvaluationConfig:
    schedule: Schedule = Schedule.log
    per_decade: int = check(4, "positive")  # log schedule: evaluations per factor of ten
    first: float = check(1e4, "whole")  # log schedule: the first after the start
    every: float = check(1e6, "whole")  # linear schedule: samples between evaluations
    estimator: EstimatorName = EstimatorName.sgvb_b  # the bound of the train/test curves (PAPER.md §10.7)
    n_samples: int = check(1, "positive")  # its L
    train_points: Optional[int] = check(None, "positive")  # training points evaluated; null: all
    test_points: Optional[int] = check(None, "positive")  # test points evaluated; null: all
    batch_size: int = check(1000, "positive")  # datapoints a forward pass
    loglik: bool = False  # also the App. D estimate of log p(x) (Fig. 3); always on for a method without q(z|x)
    loglik_points: int = check(1000, "positive")  # first training and test points of it (AEVB App. E)


@dataclass
class SpeedConfig:
    compile: bool = False  # torch.compile each update of the method (accel/compiled.py); agrees with eager to rounding
    n_models: int = check(1, "positive")  # K > 1: seeds seed..seed+K-1 as one stack (accel/stack.py), each as its own run
    threads: Optional[int] = check(None, "positive")  # torch intra-op threads; null: torch's default
    flush_denormals: bool = True  # CPU: subnormal floats read and written as 0 (`jobs.configure_cpu`)


@dataclass
class LoggerConfig:
    tensorboard: bool = False  # TensorBoard scalars in the run's tb/ (pip install "vae-cli[tensorboard]")


@dataclass
class TrainConfig:
    dataset: Any = MISSING  # one option of conf/dataset/
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = MISSING  # one option of conf/method/
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optimizer: Any = MISSING  # one option of conf/optimizer/
    prior: PriorConfig = field(default_factory=PriorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    reading: Reading = Reading.author_code  # where the paper is silent: the author's code | the paper's text
    experiment_name: Optional[str] = None  # set by an `experiment` preset; names its sweep folder
    scale_name: str = "full"  # set by the `scale` group: full | smoke
    seed: int = 0  # one seed for initialisation, data order and noise
    device: str = "auto"  # auto | cpu | cuda


PAPER_MODEL = {"mnist": {"hidden": [500], "decoder": "bernoulli"}, "frey": {"hidden": [200], "decoder": "gaussian_sigmoid"}}  # PAPER.md §5-6
GROUPS = {"model": ModelConfig, "estimator": EstimatorConfig, "prior": PriorConfig, "trainer": TrainerConfig,
          "evaluation": EvaluationConfig, "speed": SpeedConfig}  # groups of one schema
OPTIONS = {
    "dataset": {"mnist": MnistConfig, "frey": FreyConfig},
    "method": {"aevb": MethodConfig, "wake_sleep": MethodConfig, "mcem": MCEMConfig, "full_vb": FullVBConfig},
    "optimizer": {"adagrad": AdagradConfig, "adam": AdamConfig, "sgd": SGDConfig},
}


def _by_reading(author, paper, *, _root_):
    return author if _root_.reading == Reading.author_code else paper


def _paper(key: str, *, _root_):
    return PAPER_MODEL[_root_.dataset.name][key]


def register_configs() -> None:
    if not OmegaConf.has_resolver("by_reading"):
        OmegaConf.register_new_resolver("by_reading", _by_reading)
        OmegaConf.register_new_resolver("paper", _paper)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, options in OPTIONS.items():
        for option, schema in options.items():
            store.store(group=group, name=f"{option}_schema", node=schema)
    from .jobs.evaluate import register_eval_configs  # the vae-eval schemas live with their job

    register_eval_configs(store)


def _checks(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise a one-line UserError for the first value against its field's `check` rule."""
    for f in fields(schema):
        value = cfg.get(f.name)
        key = prefix + f.name
        nested = f.default_factory if f.default_factory is not NO_DEFAULT else None
        if is_dataclass(nested) and isinstance(value, DictConfig):
            _checks(value, nested, key + ".")
        rule = f.metadata.get("check")
        if rule is None or value is None:
            continue
        bad = {"positive": lambda v: not v > 0, "non_negative": lambda v: not v >= 0, "probability": lambda v: not 0 < v < 1,
               "whole": lambda v: not (v > 0 and float(v) == int(v))}[rule]
        values = list(value) if OmegaConf.is_list(value) else [value]
        if any(bad(v) for v in values):
            shown = list(value) if OmegaConf.is_list(value) else value
            need = {"positive": "must be positive", "non_negative": "must be >= 0", "probability": "must lie strictly between 0 and 1",
                    "whole": "must be a positive whole number of samples"}[rule]
            raise UserError(f"{key}={shown} {need}; set {key}= to such a value")


def validate(cfg: DictConfig) -> None:
    """The checks types cannot express, each a one-line UserError naming the key and a fix."""
    from .methods import METHODS  # what each method can do is its own record, read here

    for group in ("dataset", "method", "optimizer"):
        _checks(cfg[group], OPTIONS[group][cfg[group].name], group + ".")
    for name, schema in GROUPS.items():
        _checks(cfg[name], schema, name + ".")
    if any(h <= 0 for h in cfg.model.hidden):
        raise UserError(f"model.hidden={list(cfg.model.hidden)} must hold positive layer sizes, e.g. model.hidden=[500]")
    if cfg.dataset.name == "mnist" and cfg.dataset.binarize != Binarize.none and cfg.model.decoder != Decoder.bernoulli:
        raise UserError(f"dataset.binarize={cfg.dataset.binarize.value} needs a Bernoulli decoder; set dataset.binarize=none for {cfg.model.decoder.value}")
    if cfg.method.name == "full_vb" and cfg.prior.precision == 0:
        raise UserError("method=full_vb needs a proper hyperprior p_alpha(theta); set prior.precision= above 0 (paper: 1)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={cfg.device} is not one of auto, cpu, cuda; set device=<one of them>")
    can = METHODS[cfg.method.name].capabilities
    if cfg.speed.compile and not can.compile:
        raise UserError(f"speed.compile=true: method={cfg.method.name} trains eagerly only; set speed.compile=false")
    if cfg.speed.n_models > 1 and not can.stack:
        seeds = ",".join(str(cfg.seed + k) for k in range(cfg.speed.n_models))
        raise UserError(f"speed.n_models={cfg.speed.n_models}: method={cfg.method.name} cannot be stacked; "
                        f"run the seeds as separate jobs: speed.n_models=1 seed={seeds} --multirun")


def typed_config(saved: dict) -> DictConfig:
    """A saved (resolved, upgraded) config as a typed one: every group by its option's schema."""
    cfg = OmegaConf.structured(TrainConfig)
    for group, options in OPTIONS.items():
        name = (saved.get(group) or {}).get("name")
        if name not in options:
            raise UserError(f"the saved config's {group}.name={name!r} is not one of {', '.join(options)}; use a matching vae-cli version")
        cfg[group] = OmegaConf.structured(options[name])
    try:
        return OmegaConf.merge(cfg, saved)
    except Exception as e:  # noqa: BLE001 - any mismatch with this version's schema
        raise UserError(f"the saved config does not fit this vae-cli ({str(e).splitlines()[0][:160]}); use a matching vae-cli version") from None


def to_container(cfg: Any) -> dict:
    """The resolved config as plain Python containers (what run folders and checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
