"""The paper's presets compose with PAPER.md's values; the scale group shrinks budgets only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import compose_config
from vae_cli.config import validate
from vae_cli.runs import RESUMABLE_CHANGES

SCRIPT = Path(sys.executable).parent / "vae-train"
PRESETS = ["fig2_mnist", "fig2_frey", "fig3", "fig4", "fig5"]


def composed(*overrides: str, part: str = "job") -> dict:
    """What `vae-train ... --cfg job|hydra` prints, parsed: the real console script, as a user runs it."""
    out = subprocess.run([str(SCRIPT), *overrides, "--cfg", part], capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_through_the_console_script(preset):
    cfg = composed(f"experiment={preset}")
    assert cfg["experiment_name"] == preset and cfg["scale_name"] == "full"
    assert cfg["trainer"]["on_existing"] == "continue"  # a relaunch continues the sweep
    validate(compose_config([f"experiment={preset}"]))
    hydra = composed(f"experiment={preset}", part="hydra")["hydra"]
    assert hydra["sweep"]["dir"] == f"multirun/{preset}/${{scale_name}}"
    assert hydra["sweep"]["subdir"] == "${hydra.job.override_dirname}"


def test_fig2_presets_hold_the_papers_settings():
    """PAPER.md §6: M = 100, L = 1, Adagrad, N(0, 0.01) init, N(0, I) weight prior, 500 / 200 hidden
    units, N_z panels 3-200 (MNIST) and 2-20 (Frey), AEVB against wake-sleep, up to 1e8 samples."""
    for preset, hidden, nzs in (("fig2_mnist", [500], "3,5,10,20,200"), ("fig2_frey", [200], "2,5,10,20")):
        cfg = compose_config([f"experiment={preset}"])
        assert list(cfg.model.hidden) == hidden and cfg.model.init_std == 0.01
        assert cfg.trainer.batch_size == 100 and cfg.estimator.n_samples == 1 and cfg.estimator.name == "sgvb_b"
        assert cfg.optimizer.name == "adagrad" and cfg.optimizer.lr in (0.01, 0.02, 0.1)
        assert cfg.prior.precision == 1.0 and cfg.dataset.n_train is None and cfg.dataset.binarize == "none"
        assert int(cfg.trainer.max_samples) == 10**8 and cfg.trainer.eval_schedule == "log"
        params = composed(f"experiment={preset}", part="hydra")["hydra"]["sweeper"]["params"]
        assert params == {"model.latent_dim": nzs, "method": "aevb,wake_sleep"}
    assert compose_config(["experiment=fig2_frey"]).dataset.name == "frey"


def test_fig3_preset_holds_the_papers_settings():
    """PAPER.md §6-8: MNIST, 100 hidden units, N_z = 3, N_train 1000 and 50000, AEVB, wake-sleep and
    MCEM, App. D log-likelihood on the first 1000 train and test points, linear x-axis to 60M."""
    cfg = compose_config(["experiment=fig3"])
    assert cfg.model.latent_dim == 3 and list(cfg.model.hidden) == [100] and cfg.dataset.name == "mnist"
    assert cfg.trainer.track_loglik and cfg.trainer.loglik_points == 1000 and cfg.trainer.eval_schedule == "linear"
    assert int(cfg.trainer.max_samples) == 6 * 10**7
    params = composed("experiment=fig3", part="hydra")["hydra"]["sweeper"]["params"]
    assert params == {"dataset.n_train": "1000,50000", "method": "aevb,wake_sleep,mcem"}
    assert compose_config(["experiment=fig3", "method=mcem"]).method.n_leapfrog == 10  # App. E


def test_fig4_runs_both_data_sets_without_multirun_and_fig5_sweeps_the_latent_sizes():
    hydra = composed("experiment=fig4", part="hydra")["hydra"]
    assert hydra["mode"] == "MULTIRUN" and hydra["sweeper"]["params"] == {"dataset": "mnist,frey"}
    assert compose_config(["experiment=fig4"]).model.latent_dim == 2
    assert composed("experiment=fig5", part="hydra")["hydra"]["sweeper"]["params"] == {"model.latent_dim": "2,5,10,20"}


def test_smoke_scale_shrinks_budgets_and_evaluations_only():
    full, smoke = compose_config(["experiment=fig3"]), compose_config(["experiment=fig3", "scale=smoke"])
    assert smoke.scale_name == "smoke" and int(smoke.trainer.max_samples) < int(full.trainer.max_samples)
    assert smoke.trainer.loglik_points < full.trainer.loglik_points
    same = ("model", "method", "dataset", "estimator", "optimizer", "prior")
    assert all(smoke[k] == full[k] for k in same)
    assert composed("experiment=fig3", "scale=smoke", part="hydra")["hydra"]["sweeper"]["params"] == \
        composed("experiment=fig3", part="hydra")["hydra"]["sweeper"]["params"]


def test_stepsize_search_sweeps_the_papers_candidates():
    hydra = composed("experiment=fig2_frey", "hparams_search=stepsize", part="hydra")["hydra"]
    assert hydra["sweeper"]["params"]["optimizer.lr"] == "0.01,0.02,0.1"  # PAPER.md §6
    assert hydra["sweeper"]["params"]["method"] == "aevb"
    assert hydra["sweep"]["dir"] == "multirun/stepsize/${experiment_name}/${scale_name}"


def test_launcher_configs_for_local_cores_and_slurm_compose():
    joblib = composed("experiment=fig2_mnist", "hydra/launcher=joblib", part="hydra")["hydra"]["launcher"]
    assert joblib["n_jobs"] == -1 and joblib["_target_"].endswith("JoblibLauncher")
    slurm = composed("experiment=fig2_mnist", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.timeout_min=2880", "hydra.launcher.gpus_per_node=1", part="hydra")["hydra"]["launcher"]
    assert slurm["partition"] == "gpu" and slurm["timeout_min"] == 2880 and slurm["gpus_per_node"] == 1


def test_the_slurm_preset_requeues_timed_out_jobs_and_takes_overrides():
    slurm = composed("experiment=fig2_mnist", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=8",
                     part="hydra")["hydra"]["launcher"]
    assert slurm["_target_"].endswith("SlurmLauncher") and slurm["partition"] == "gpu" and slurm["cpus_per_task"] == 8
    assert slurm["max_num_timeout"] > 0 and slurm["gpus_per_node"] == 1 and slurm["timeout_min"] == 720


def test_sweep_folders_are_named_without_the_keys_a_relaunch_may_change():
    """A relaunched sweep finds its jobs' folders again (trainer.on_existing=continue) whatever it changes among
    the keys a resumed run may change: none of them is part of a job folder's name."""
    train_yaml = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "train.yaml").read_text())
    excluded = set(train_yaml["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])
    as_overridden = {"logger.name": "logger"}  # a config group is overridden by its own name
    assert {as_overridden.get(k, k) for k in RESUMABLE_CHANGES} <= excluded
