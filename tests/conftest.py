"""Shared fixtures: the real data folder (skip with a reason when absent) and composed configs."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker (and its console scripts): no oversubscribed cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module

from vae_cli.config import register_configs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Variables read when Python or torch start, not when a command runs: a command that sets one of them
# gets a fresh interpreter instead of a child of the zygote.
READ_AT_START = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "LD_", "CUDA_", "TORCH_")
_zygote: dict = {}


def run_console_script(script: str, *args: str, env: dict | None = None, cwd: Path | str | None = None,
                       timeout: float = 300) -> subprocess.CompletedProcess:
    """`script args` as a user runs it (its own process, exit code, stdout, stderr), like subprocess.run with
    capture_output and text; a child of tests/console_zygote.py, which has imported torch and vae_cli once."""
    path = BIN / script
    assert path.is_file(), f"{path} missing: install the package with the README's command"
    env = dict(os.environ if env is None else env)
    changed = {k for k in env.keys() | os.environ.keys() if env.get(k) != os.environ.get(k)}
    if any(k.startswith(READ_AT_START) for k in changed):
        return subprocess.run([str(path), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    zygote = _start_zygote()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        request = {"script": script, "script_path": str(path), "args": list(args), "env": env, "cwd": str(cwd or os.getcwd()),
                   "stdout": str(out), "stderr": str(err), "timeout": timeout}
        zygote.stdin.write(json.dumps(request) + "\n")
        zygote.stdin.flush()
        reply = json.loads(zygote.stdout.readline() or '{"died": true}')
        if reply.get("died"):
            _zygote.clear()
            raise RuntimeError("tests/console_zygote.py stopped (its error is on the test's stderr)")
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if reply.get("timeout"):
        raise subprocess.TimeoutExpired([script, *args], timeout, stdout, stderr)
    return subprocess.CompletedProcess([str(path), *args], reply["returncode"], stdout, stderr)


def _start_zygote() -> subprocess.Popen:
    proc = _zygote.get("proc")
    if proc is None or proc.poll() is not None:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("console_zygote.py"))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
        _zygote["proc"] = proc
        atexit.register(proc.kill)
    return proc


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
