"""Typed schemas of the config groups in `conf/`: the one home of every default and every choice.

Each group option is a dataclass (registered by `config.register_configs` as `<group>/<option>_schema`),
so a misspelt key or a wrong type fails at composition and a choice outside its `Enum` fails with the
valid values listed. What a type cannot say (a size must be positive) sits in the field's metadata
(`checks.check`). The YAML files of `conf/` hold usage comments and the presets, not the defaults.

Where the paper is silent, the defaults follow the author's own code, `reading=author_code` (PAPER.md
§12); `reading=paper_text` takes the paper's text literally instead (plain Adagrad, eq. (12) as written,
epoch-wise minibatches, Frey Face's sequential split). The resolver `${by_reading:a,b}` picks a (author's
code) or b (paper's text), `${data:key}` a default that depends on the data set (`DATA_DEFAULTS`: the
paper's hidden units and decoder, PAPER.md §5-6, and for Frey Face the author's decoder and stepsize); a
run's saved config.yaml holds the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import II, MISSING, OmegaConf

from .checks import check


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
    hidden: List[int] = II("data:hidden")  # tanh hidden layers of encoder and decoder (paper: [500] MNIST, [200] Frey)
    decoder: Decoder = II("data:decoder")  # p(x|z) (paper: bernoulli for MNIST, gaussian_sigmoid for Frey)
    init_std: float = check(0.01, "positive")  # every parameter ~ N(0, init_std^2) (PAPER.md §6)
    encoder_log_var_scale: float = check(II("by_reading:0.1,1.0"), "positive")  # log sigma^2 = s (W5 h) + b5 of q(z|x) (PAPER.md §12.2)
    encoder_log_var_init: HeadInit = II("by_reading:zero,random")  # W5, b5 of q(z|x) at the start (PAPER.md §12.2)
    decoder_variance: Variance = II("data:decoder_variance")  # a Gaussian p(x|z)'s log sigma^2 (PAPER.md §12.6)
    decoder_uniform_mixture: bool = II("data:decoder_uniform_mixture")  # mix a Gaussian p(x|z) with U(0, 1) per pixel (PAPER.md §12.6)
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
    jitter: float = check(0.2, "fraction")  # step size drawn from step x [1 - jitter, 1 + jitter] per transition (hmc.py)


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
    lr: float = check(II("data:lr"), "positive")  # the paper's rule: the best training bound of {0.01, 0.02, 0.1} at 1e5 samples
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
    train_points: Optional[int] = check(10000, "positive")  # the first training points evaluated (null: all 50,000 of MNIST)
    test_points: Optional[int] = check(None, "positive")  # test points evaluated; null: all
    batch_size: int = check(1000, "positive")  # datapoints a forward pass
    loglik: bool = False  # also the App. D estimate of log p(x) (Fig. 3); always on for a method without q(z|x)
    loglik_points: int = check(1000, "positive")  # first training and test points of it (AEVB App. E)


@dataclass
class SpeedConfig:
    compile: bool = False  # torch.compile each update of the method (accel/compiled.py); agrees with eager to rounding
    n_models: int = check(1, "positive")  # K > 1: seeds seed..seed+K-1 as one stack (accel/stack.py), each as its own run
    threads: Optional[int] = check(None, "positive")  # torch intra-op threads; null: the cores this process may use
    # (os.sched_getaffinity: a SLURM or taskset allocation, not the whole machine), at most torch's default (OMP_NUM_THREADS)
    flush_denormals: bool = True  # CPU: subnormal floats read and written as 0 (`jobs.configure_cpu`)


@dataclass
class LoggerConfig:
    tensorboard: bool = False  # TensorBoard scalars in the run's tb/ (the [tensorboard] extra)
    mlflow: bool = False  # an MLflow run per vae-train run (the [mlflow] extra)
    mlflow_uri: Optional[str] = None  # MLflow's tracking URI; null: sqlite:///mlflow.db in the folder vae-train starts in
    mlflow_experiment: str = "vae-cli"  # the MLflow experiment the runs go to


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


DATA_DEFAULTS = {  # a pair: (reading=author_code, reading=paper_text)
    "mnist": {"hidden": [500], "decoder": "bernoulli", "decoder_variance": "data_dependent", "decoder_uniform_mixture": False, "lr": 0.02},
    "frey": {"hidden": [200], "decoder": "gaussian_sigmoid",  # PAPER.md §5-6
             "decoder_variance": ("per_pixel", "data_dependent"), "decoder_uniform_mixture": (True, False),  # [K14], PAPER.md §12.6
             "lr": (0.1, 0.02)},  # each the paper's rule's choice for that decoder (README, results)
}
GROUPS = {"model": ModelConfig, "estimator": EstimatorConfig, "prior": PriorConfig, "trainer": TrainerConfig,
          "evaluation": EvaluationConfig, "speed": SpeedConfig}  # groups of one schema
OPTIONS = {
    "dataset": {"mnist": MnistConfig, "frey": FreyConfig},
    "method": {"aevb": MethodConfig, "wake_sleep": MethodConfig, "mcem": MCEMConfig, "full_vb": FullVBConfig},
    "optimizer": {"adagrad": AdagradConfig, "adam": AdamConfig, "sgd": SGDConfig},
}


def _by_reading(author, paper, *, _root_):
    return author if _root_.reading == Reading.author_code else paper


def _data(key: str, *, _root_):
    value = DATA_DEFAULTS[_root_.dataset.name][key]
    return value if not isinstance(value, tuple) else value[0 if _root_.reading == Reading.author_code else 1]


if not OmegaConf.has_resolver("by_reading"):  # what the schemas' interpolations call, wherever they are read
    OmegaConf.register_new_resolver("by_reading", _by_reading)
    OmegaConf.register_new_resolver("data", _data)
