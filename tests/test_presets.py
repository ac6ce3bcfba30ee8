"""The paper's presets pin only what their figure defines and compose with PAPER.md's values (the
defaults); the scale group shrinks budgets only; sweep folders survive a relaunch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from conftest import compose_config, run_console_script
from vae_cli.config import register_configs, to_container, validate
from vae_cli.runs import RESUMABLE_CHANGES

SCRIPT = Path(sys.executable).parent / "vae-train"
CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = ["fig2_mnist", "fig2_frey", "fig3", "fig4", "fig5"]


def composed(*overrides: str, part: str = "job") -> dict:
    """What `vae-train ... --cfg job --resolve` (or `--cfg hydra`) prints, parsed: the real console script, as a user runs it."""
    resolve = ["--resolve"] if part == "job" else []
    done = run_console_script("vae-train", *overrides, "--cfg", part, *resolve)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_through_the_console_script(preset):
    cfg = composed(f"experiment={preset}")
    assert cfg["experiment_name"] == preset and cfg["scale_name"] == "full"
    assert cfg["trainer"]["on_existing"] == "resume"  # a relaunch resumes the sweep's unfinished runs
    validate(compose_config([f"experiment={preset}"]))
    hydra = _hydra_node(f"experiment={preset}")
    assert hydra["sweep"]["dir"] == f"multirun/{preset}/${{scale_name}}"
    assert hydra["sweep"]["subdir"] == "${hydra.job.override_dirname}"


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_pins_only_the_keys_its_yaml_names(preset):
    """Everything else is the default (the paper's settings, the author's code where the paper is silent):
    the composed preset differs from the defaults with the same data set and method only in the YAML's keys."""
    text = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())
    groups = [f"{next(iter(d)).split('/')[-1]}={d[next(iter(d))]}" for d in text["defaults"]]  # "override /dataset": mnist
    pinned = set(_flat({k: v for k, v in text.items() if k not in ("defaults", "hydra")}))
    assert pinned, preset
    preset_cfg = _flat(to_container(compose_config([f"experiment={preset}"])))
    default_cfg = _flat(to_container(compose_config(groups)))
    changed = {k for k in preset_cfg.keys() | default_cfg.keys() if preset_cfg.get(k) != default_cfg.get(k)}
    assert changed <= pinned, changed - pinned
    assert all(preset_cfg[k] == v for k, v in _flat({k: v for k, v in text.items() if k not in ("defaults", "hydra")}).items())


def test_fig2_presets_hold_the_papers_settings():
    """PAPER.md §6: M = 100, L = 1, Adagrad, N(0, 0.01^2) init, N(0, I) weight prior, 500 / 200 hidden
    units, N_z panels 3-200 (MNIST) and 2-20 (Frey), AEVB against wake-sleep, up to 1e8 samples;
    PAPER.md §12 where the paper is silent."""
    for preset, hidden, nzs in (("fig2_mnist", [500], "3,5,10,20,200"), ("fig2_frey", [200], "2,5,10,20")):
        cfg = compose_config([f"experiment={preset}"])
        assert list(cfg.model.hidden) == hidden and cfg.model.init_std == 0.01
        assert cfg.trainer.batch_size == 100 and cfg.estimator.n_samples == 1 and cfg.estimator.name == "sgvb_b"
        assert cfg.optimizer.name == "adagrad" and cfg.optimizer.lr in (0.01, 0.02, 0.1)
        assert cfg.prior.precision == 1.0 and cfg.dataset.n_train is None
        assert int(cfg.trainer.max_samples) == 10**8 and cfg.evaluation.schedule == "log"
        assert cfg.reading == "author_code" and cfg.optimizer.warmup_steps == 10 and cfg.model.encoder_log_var_scale == 0.1
        assert cfg.trainer.minibatches == "with_replacement"
        params = _hydra_node(f"experiment={preset}")["sweeper"]["params"]
        assert params == {"model.latent_dim": nzs, "method": "aevb,wake_sleep"}
    mnist, frey = compose_config(["experiment=fig2_mnist"]), compose_config(["experiment=fig2_frey"])
    assert mnist.dataset.name == "mnist" and mnist.dataset.binarize == "none" and mnist.model.decoder == "bernoulli"
    assert frey.dataset.name == "frey" and frey.model.decoder == "gaussian_sigmoid"
    assert frey.dataset.split == "shuffled" and frey.dataset.train_frames == 1600  # [K14]'s split
    literal = compose_config(["experiment=fig2_frey", "reading=paper_text"])
    assert literal.dataset.split == "sequential" and literal.dataset.train_frames == 1500 and literal.optimizer.warmup_steps == 0
    assert int(literal.trainer.max_samples) == 10**8 and literal.experiment_name == "fig2_frey"  # the preset's own keys stay


def test_fig3_preset_holds_the_papers_settings():
    """PAPER.md §6-8: MNIST, 100 hidden units, N_z = 3, N_train 1000 and 50000, AEVB, wake-sleep and
    MCEM, App. D log-likelihood on the first 1000 train and test points, linear x-axis to 60M."""
    cfg = compose_config(["experiment=fig3"])
    assert cfg.model.latent_dim == 3 and list(cfg.model.hidden) == [100] and cfg.dataset.name == "mnist"
    assert cfg.evaluation.loglik and cfg.evaluation.loglik_points == 1000 and cfg.evaluation.schedule == "linear"
    assert cfg.evaluation.train_points == cfg.evaluation.test_points == 1000
    assert int(cfg.trainer.max_samples) == 6 * 10**7 and cfg.trainer.batch_size == 100 and cfg.optimizer.name == "adagrad"
    params = _hydra_node("experiment=fig3")["sweeper"]["params"]
    assert params == {"dataset.n_train": "1000,50000", "method": "aevb,wake_sleep,mcem"}
    mcem = compose_config(["experiment=fig3", "method=mcem"])
    assert mcem.method.n_leapfrog == 10 and mcem.method.n_weight_updates == 5 and mcem.method.target_accept == 0.9  # App. E


def test_fig4_runs_both_data_sets_without_multirun_and_fig5_sweeps_the_latent_sizes():
    hydra = _hydra_node("experiment=fig4")
    assert hydra["mode"].name == "MULTIRUN" and hydra["sweeper"]["params"] == {"dataset": "mnist,frey"}
    fig4 = compose_config(["experiment=fig4"])
    assert fig4.model.latent_dim == 2 and fig4.method.name == "aevb" and int(fig4.trainer.max_samples) == 10**7
    assert _hydra_node("experiment=fig5")["sweeper"]["params"] == {"model.latent_dim": "2,5,10,20"}
    fig5 = compose_config(["experiment=fig5"])
    assert fig5.dataset.name == "mnist" and fig5.method.name == "aevb" and list(fig5.model.hidden) == [500]


def test_smoke_scale_shrinks_budgets_and_evaluations_only():
    full, smoke = compose_config(["experiment=fig3"]), compose_config(["experiment=fig3", "scale=smoke"])
    assert smoke.scale_name == "smoke" and int(smoke.trainer.max_samples) < int(full.trainer.max_samples)
    assert smoke.evaluation.loglik_points < full.evaluation.loglik_points
    assert smoke.evaluation.every < full.evaluation.every and smoke.evaluation.loglik == full.evaluation.loglik
    same = ("model", "method", "dataset", "estimator", "optimizer", "prior", "speed", "logger", "reading", "seed")
    assert all(smoke[k] == full[k] for k in same)
    assert {k: v for k, v in smoke.trainer.items() if k not in ("max_samples", "checkpoint_every")} == \
        {k: v for k, v in full.trainer.items() if k not in ("max_samples", "checkpoint_every")}
    assert _hydra_node("experiment=fig3", "scale=smoke")["sweeper"]["params"] == \
        _hydra_node("experiment=fig3")["sweeper"]["params"]
    assert _with_hydra("experiment=fig3", "scale=smoke").hydra.sweep.dir == "multirun/fig3/smoke"
    assert _with_hydra("experiment=fig3").hydra.sweep.dir == "multirun/fig3/full"


def test_stepsize_search_sweeps_the_papers_candidates():
    hydra = _hydra_node("experiment=fig2_frey", "hparams_search=stepsize")
    assert hydra["sweeper"]["params"]["optimizer.lr"] == "0.01,0.02,0.1"  # PAPER.md §6
    assert hydra["sweeper"]["params"]["method"] == "aevb"
    assert hydra["sweep"]["dir"] == "multirun/stepsize/${experiment_name}/${scale_name}"
    assert _with_hydra("experiment=fig2_frey", "hparams_search=stepsize").hydra.sweep.dir == "multirun/stepsize/fig2_frey/full"


def test_launcher_configs_for_local_cores_and_slurm_compose():
    joblib = _hydra_node("experiment=fig2_mnist", "hydra/launcher=joblib")["launcher"]
    assert joblib["n_jobs"] == -1 and joblib["_target_"].endswith("JoblibLauncher")
    slurm = _hydra_node("experiment=fig2_mnist", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.timeout_min=2880", "hydra.launcher.gpus_per_node=1")["launcher"]
    assert slurm["partition"] == "gpu" and slurm["timeout_min"] == 2880 and slurm["gpus_per_node"] == 1


def test_the_slurm_preset_requeues_timed_out_jobs_and_takes_overrides():
    slurm = composed("experiment=fig2_mnist", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=8",
                     part="hydra")["hydra"]["launcher"]
    assert slurm["_target_"].endswith("SlurmLauncher") and slurm["partition"] == "gpu" and slurm["cpus_per_task"] == 8
    assert slurm["max_num_timeout"] > 0 and slurm["gpus_per_node"] == 1 and slurm["timeout_min"] == 720


def _hydra_node(*overrides: str) -> dict:
    """The `hydra` node as `vae-train ... --cfg hydra` prints it (interpolations left as written), in-process."""
    return OmegaConf.to_container(_with_hydra(*overrides).hydra, resolve=False)


def _with_hydra(*overrides: str):
    """The composed config with its `hydra` node, in-process."""
    register_configs()
    with initialize_config_module(config_module="vae_cli.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


# A value other than the default for each key a resumed run may change.
RESUMABLE_VALUES = {
    "trainer.max_samples": "5e6", "trainer.progress": "false", "trainer.progress_every": "10", "trainer.checkpoint_every": "1e5",
    "trainer.figures": "false", "trainer.on_nan": "skip_batch", "trainer.on_existing": "refuse", "speed.threads": "2",
    "speed.compile": "true", "speed.flush_denormals": "false", "dataset.root": "/elsewhere", "dataset.download": "false",
    "device": "cpu", "logger.tensorboard": "true", "logger.mlflow": "true", "logger.mlflow_uri": "sqlite:///elsewhere.db",
    "logger.mlflow_experiment": "other",
}


def _job_folder(*overrides: str) -> str:
    """The name a sweep job of fig3 with these overrides gets (`hydra.job.override_dirname`)."""
    return _with_hydra("experiment=fig3", "method=aevb", "dataset.n_train=1000", *overrides).hydra.job.override_dirname


@pytest.mark.parametrize("key", sorted(RESUMABLE_CHANGES))
def test_sweep_folders_are_named_without_the_keys_a_relaunch_may_change(key):
    """A relaunched sweep finds its jobs' folders again (trainer.on_existing=resume) whatever it changes among
    the keys a resumed run may change: none of them is part of a job folder's name."""
    absent = object()
    assert OmegaConf.select(compose_config([]), key, default=absent) is not absent, f"RESUMABLE_CHANGES names {key}, which is no config key"
    assert key in RESUMABLE_VALUES, f"give {key} a value in RESUMABLE_VALUES"
    plain = _job_folder()
    assert plain == "dataset.n_train=1000,method=aevb"
    assert _job_folder(f"{key}={RESUMABLE_VALUES[key]}") == plain
    assert _job_folder("logger=tensorboard", "scale=smoke", "hydra/launcher=joblib") == plain  # groups a relaunch may add


def test_keys_left_out_of_folder_names_are_those_a_resumed_run_may_change():
    """The other direction: a key left out of the names but not resumable would put two jobs of a sweep
    that differ in it into one folder, the second refused or resumed as the first."""
    train_yaml = yaml.safe_load((CONF / "train.yaml").read_text())
    excluded = set(train_yaml["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])
    groups = {"experiment", "scale", "hparams_search", "hydra/launcher", "logger"}  # what they set is resumable or the sweep's own
    assert excluded - groups <= RESUMABLE_CHANGES
    assert _job_folder("seed=3") != _job_folder() and _job_folder("optimizer.lr=0.1") != _job_folder()
