"""Every benchmark script still runs to its ratios and exits 0, at its smallest settings.

No timing is asserted (the numbers are the scripts' business, benchmarks/README.md): these only keep the
scripts from rotting as the package changes under them, since nothing else imports them.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # minutes in all; the scripts themselves are the documented commands (benchmarks/README.md)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

SMOKE = {  # script: (its smallest arguments, lines its output must hold)
    "train_throughput.py": (["--rounds", "2", "--seconds", "0.02", "--batch-sizes", "100", "--no-rss"],
                            ["vae-cli / lean loop", "vae-cli / examples loop", "vae-cli compiled / GEMM bound", "(rounds "]),
    "train_throughput.py --method wake_sleep": (["--method", "wake_sleep", "--rounds", "2", "--seconds", "0.02", "--batch-sizes", "100"],
                                                ["vae-cli compiled / vae-cli", "(rounds "]),
    "n_models_throughput.py": (["--models", "1", "2", "--rounds", "2", "--seconds", "0.02"], ["stack / separate", "(rounds "]),
    "hmc_throughput.py": (["--repeats", "1"], ["HMC kernel (one hmc_step)", "MCEM step"]),
    "eval_throughput.py": ([], ["iwae k=5000", "ais T=50", "test-set bound"]),
    "sweep_throughput.py": (["--samples", "1e3", "--rounds", "1"], ["speed-up of the sweep"]),
    "process_throughput.py": (["--samples", "2e3", "--rounds", "1", "--threads", "1"], ["vae-train / examples loop", "vae-train compiled"]),
    "compare_versions.py": (["--before", str(BENCHMARKS.parent), "--before-python", sys.executable, "--sittings", "1", "--rounds", "1",
                             "--seconds", "0.02"], ["after / before", "stack of K = 16", "vae-cli compiled step"]),
    "gpu.py": (["--device", "cpu", "--tiny", "--seconds", "0.05", "--out", "gpu_out", "--budget", "120"],
               ["(a) M = 100", "captured", "stack K=4", "(b) IWAE", "(c) 20000 samples on cpu", "(d) AEVB MNIST"]),
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_to_its_ratios(script, shared_data, tmp_path):
    args, expected = SMOKE[script]
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script.split()[0]), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for line in expected:
        assert line in done.stdout, (line, done.stdout[-2000:])
