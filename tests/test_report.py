"""Smoke sweeps of the paper's presets end to end on real data, through vae-report; launchers;
relaunching a sweep; a report drawn around broken and unfinished runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
QUIET = ["trainer.progress=false", "trainer.threads=1"]


def run(script: str, *args: str, cwd: Path, data: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_CLI_DATA": str(data)}
    result = subprocess.run([str(BIN / script), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def final_rows(sweep: Path) -> dict[str, dict]:
    return {m.parent.name: json.loads(m.read_text().splitlines()[-1]) for m in sweep.glob("*/metrics.jsonl")}


def table_rows(report_md: Path) -> list[str]:
    return [line for line in report_md.read_text().splitlines() if line.startswith("| mnist") or line.startswith("| frey")]


def test_fig2_mnist_smoke_sweep_to_report(tmp_path, shared_data):
    """Two N_z, both methods: every run finishes, the figures exist, a table row per run, and AEVB's
    bound beats wake-sleep's at the last evaluation (Fig. 2, every panel)."""
    run("vae-train", "experiment=fig2_mnist", "scale=smoke", "model.latent_dim=3,20", "hydra/launcher=joblib", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_mnist" / "smoke"
    rows = final_rows(sweep)
    assert sorted(rows) == ["method=aevb,model.latent_dim=20", "method=aevb,model.latent_dim=3",
                            "method=wake_sleep,model.latent_dim=20", "method=wake_sleep,model.latent_dim=3"]
    for nz in (3, 20):
        aevb, ws = rows[f"method=aevb,model.latent_dim={nz}"], rows[f"method=wake_sleep,model.latent_dim={nz}"]
        assert aevb["samples"] == ws["samples"] == 30_000
        assert aevb["test_bound"] > ws["test_bound"] and aevb["train_bound"] > ws["train_bound"]
    out = run("vae-report", str(sweep), cwd=tmp_path, data=shared_data).stdout
    assert "4 of 4 runs drawn" in out
    report = sweep / "report"
    for name in ("fig2_mnist.png", "fig2_mnist.pdf", "fig5.png", "report.md"):
        assert (report / name).is_file() and (report / name).stat().st_size > 1000, name
    assert len(table_rows(report / "report.md")) == 4


def test_fig3_smoke_sweep_to_report(tmp_path, shared_data):
    """Both N_train, all three methods, the App. D log-likelihood tracked; Fig. 3 and its table."""
    run("vae-train", "experiment=fig3", "scale=smoke", "trainer.max_samples=1e4", "trainer.eval_every=5e3",
        "trainer.loglik_points=30", "hydra/launcher=joblib", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig3" / "smoke"
    rows = final_rows(sweep)
    assert len(rows) == 6
    assert all(r["train_loglik"] is not None and r["test_loglik"] is not None for r in rows.values())
    assert all(r["train_bound"] is None for name, r in rows.items() if "mcem" in name)  # no q(z|x)
    run("vae-report", str(sweep), cwd=tmp_path, data=shared_data)
    assert (sweep / "report" / "fig3.png").is_file()
    md = (sweep / "report" / "report.md").read_text()
    assert "Figure 3" in md and len(table_rows(sweep / "report" / "report.md")) == 6


def test_fig4_draws_the_two_manifolds_and_the_stepsize_search_names_a_winner(tmp_path, shared_data):
    run("vae-train", "experiment=fig4", "scale=smoke", "trainer.max_samples=5e3", *QUIET, cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig4" / "smoke"
    run("vae-report", str(sweep), cwd=tmp_path, data=shared_data)
    assert (sweep / "report" / "fig4_mnist.png").is_file() and (sweep / "report" / "fig4_frey.png").is_file()
    run("vae-train", "experiment=fig2_frey", "hparams_search=stepsize", "scale=smoke", "model.latent_dim=5",
        "trainer.max_samples=1e4", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    stepsize = tmp_path / "multirun" / "stepsize" / "fig2_frey" / "smoke"
    assert len(list(stepsize.glob("*/metrics.jsonl"))) == 3
    run("vae-report", str(stepsize), cwd=tmp_path, data=shared_data)
    md = (stepsize / "report" / "report.md").read_text()
    assert "## Stepsize selection" in md and "| best |" in md


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, shared_data):
    """The cluster path for real: jobs submitted through submitit (local executor), each a process."""
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3",
        "hydra/launcher=submitit_local", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    assert {r["samples"] for r in final_rows(sweep).values()} == {3000} and len(final_rows(sweep)) == 2
    assert list(sweep.glob(".submitit/*/*_log.out"))  # submitit's own job logs


def test_joblib_launcher_runs_jobs_side_by_side(tmp_path, shared_data):
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3",
        "hydra/launcher=joblib", "trainer.progress=false", "--multirun", cwd=tmp_path, data=shared_data)
    assert len(final_rows(tmp_path / "multirun" / "fig2_frey" / "smoke")) == 2


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_a_sweep_killed_after_its_first_job_and_launched_again_runs_only_the_missing_jobs(tmp_path, shared_data):
    args = [str(BIN / "vae-train"), "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e4", *QUIET, "--multirun"]
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    first = sweep / "method=aevb,model.latent_dim=2"
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not ((first / "figures" / "samples.png").is_file() and (tmp_path / "multirun").exists()) and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)  # the whole sweep, at once, as a preempted node would
    finally:
        process.wait()
    finished = _hashes(first)
    assert json.loads((first / "metrics.jsonl").read_text().splitlines()[-1])["samples"] == 30_000
    again = run("vae-train", *args[1:], cwd=tmp_path, data=shared_data)
    assert f"{first}: finished already (30000 samples), nothing to do" in again.stdout
    assert _hashes(first) == finished  # the finished job was not touched
    rows = final_rows(sweep)
    assert len(rows) == 2 and {r["samples"] for r in rows.values()} == {30_000}


def test_report_draws_what_exists_and_lists_broken_and_unfinished_runs(tmp_path, shared_data):
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3", *QUIET, "--multirun",
        cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    ws = sweep / "method=wake_sleep,model.latent_dim=2"
    lines = (ws / "metrics.jsonl").read_text().splitlines()
    (ws / "metrics.jsonl").write_text(lines[0] + "\n")  # as if stopped after its first evaluation: unfinished
    broken = sweep / "method=aevb,model.latent_dim=9"
    broken.mkdir()
    (broken / "config.yaml").write_text("dataset: [not, a, config\n")
    out = run("vae-report", str(sweep), cwd=tmp_path, data=shared_data).stdout
    assert "2 of 3 runs drawn" in out and f"unfinished: {ws}" in out and f"not drawn:  {broken}" in out
    md = (sweep / "report" / "report.md").read_text()
    assert "unfinished" in md and "unreadable config.yaml" in md and (sweep / "report" / "fig2_frey.png").is_file()


def _foreign_folder(tmp: Path) -> Path:
    """A folder with a config.yaml that vae-train did not write."""
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "config.yaml").write_text("a: 1\n")
    return tmp / "foreign"


@pytest.mark.parametrize("make,needle", [
    (lambda tmp: tmp / "nowhere", "is not a folder"),
    (lambda tmp: tmp, "holds no vae-train runs"),
    (_foreign_folder, "no run under"),
])
def test_vae_report_bad_folders_are_one_line_and_exit_2(tmp_path, shared_data, make, needle):
    result = run("vae-report", str(make(tmp_path)), cwd=tmp_path, data=shared_data, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-report: error: ") and needle in lines[0], result.stderr
