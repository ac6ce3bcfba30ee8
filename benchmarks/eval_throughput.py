"""Throughput and memory of vae-eval's estimators on the paper's MNIST model (Nz=20, 500 hidden).

Measured side by side in one run and printed as ratios:
1. `iwae` (k=5000): datapoints/s of the batched, chunked estimator against a naive one written
   here (a Python loop over the k samples of one datapoint at a time);
2. `ais`: datapoints/s of the batched estimator (all chains of a batch of datapoints at once)
   against a naive one (one chain of one datapoint at a time), at the same number of steps;
3. IWAE's automatic chunk (`samples_per_chunk`: tensors of 16 MiB) against chunks of 100 samples
   (the former default: 31 MB tensors at 100 points, which glibc's malloc may map afresh from the
   OS each time: the page faults are printed), each in a fresh process since the allocator's state
   depends on what ran before; and peak memory (RSS, each in a fresh process) of the chunked IWAE
   at 20 and 1000 points against the unchunked one;
4. the test-set lower bound (`evaluate_bound`, estimator B, L=1, the trainer's evaluation) and
   IWAE against a roofline: the time of their matrix products alone at the model's shapes.

Usage: python benchmarks/eval_throughput.py [--threads 1] [--keep-denormals] [--run-dir outputs/<date>/<time>]
Without --run-dir the model has the paper's random initialisation; with VAE_CLI_DATA set the
inputs are MNIST test images, otherwise uniform grey levels.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from train_throughput import parse_cpu_args

from vae_cli.evaluation import evaluate_bound
from vae_cli.likelihood.ais import AISSettings, ais, annealing_schedule
from vae_cli.likelihood.importance import IWAESettings, iwae, samples_per_chunk
from vae_cli.models import build_vae


def load_model_and_points(run_dir: str | None, n: int, use_data: bool = True):
    if run_dir:
        from pathlib import Path

        from vae_cli.saved import read_checkpoint, rebuild_model

        cfg, state = read_checkpoint(Path(run_dir), torch.device("cpu"))
        model = rebuild_model(cfg, state, 784, torch.device("cpu"))
    else:
        spec = SimpleNamespace(latent_dim=20, hidden=[500], decoder="bernoulli", init_std=0.01, encoder_log_var_scale=1.0,
                               encoder_log_var_init="random", decoder_variance="data_dependent", decoder_uniform_mixture=False,
                               decoder_min_log_var=None)
        model = build_vae(784, spec, torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    x = None
    if use_data and os.environ.get("VAE_CLI_DATA"):
        from omegaconf import OmegaConf

        from vae_cli.schemas import MnistConfig
        from vae_cli.data import load_dataset

        x = load_dataset(OmegaConf.structured(MnistConfig(download=False)), torch.device("cpu")).test[:n]
    if x is None:
        x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1))
    return model, x


def timed(fn, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def naive_iwae(model, x, k: int, generator) -> torch.Tensor:
    """One datapoint and one importance sample at a time, then logsumexp over the list."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        q = model.encoder(xi)
        log_w = []
        for _ in range(k):
            z = q.sample(generator)
            log_w.append(model.log_joint(xi, z) - q.log_prob(z))
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.stack(out)


def naive_ais(model, x, s: AISSettings, generator) -> torch.Tensor:
    """One chain of one datapoint at a time, fixed step size, the same transitions as `ais`."""
    from vae_cli.hmc import HMCState, hmc_step, value_and_grad

    betas = annealing_schedule(s.n_steps, s.schedule, s.sigmoid_radius)
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        log_lik = lambda z: model.decoder(z).log_prob(xi)  # noqa: E731
        log_w = []
        for _ in range(s.n_chains):
            z = torch.randn((1, model.latent_dim), generator=generator)
            w = 0.0
            for t in range(1, s.n_steps + 1):
                ll, _ = value_and_grad(log_lik, z)
                w += (betas[t] - betas[t - 1]).item() * ll.item()
                if t == s.n_steps:
                    break
                beta = betas[t].item()
                log_f = lambda z, b=beta: model.log_prior(z) + b * log_lik(z)  # noqa: E731
                value, grad = value_and_grad(log_f, z)
                state, _ = hmc_step(HMCState(z, value, grad), log_f, torch.tensor([0.05]), s.n_leapfrog, generator)
                z = state.z
            log_w.append(w)
        out.append(torch.logsumexp(torch.tensor(log_w, dtype=torch.float64), 0) - math.log(s.n_chains))
    return torch.stack(out)


def matmul_roofline(shapes: list[tuple[int, int, int]], repeat: int = 3) -> float:
    """Seconds of the matrix products alone: one (rows x inner) @ (inner x cols) per shape."""
    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(r, i, generator=g), torch.randn(i, c, generator=g)) for r, i, c in shapes]
    return timed(lambda: [a @ b for a, b in mats], repeat)


def layer_shapes(rows: int, encoder_rows: int) -> list[tuple[int, int, int]]:
    """The products of one forward pass of the 784-500-(2x20) encoder and 20-500-784 decoder."""
    return [(encoder_rows, 784, 500), (encoder_rows, 500, 40), (rows, 20, 500), (rows, 500, 784)]


RSS_PROBES = {"baseline": (20, 0), "chunked": (20, 5000), "chunked-1000": (1000, 200), "unchunked": (20, 5000)}  # mode: points, k
CHUNK_PROBES = {"auto": None, "100": 100}  # mode: IWAE's chunk_size


def rss_probe(mode: str, run_dir: str | None) -> None:
    """Child process: run one IWAE batch (or nothing) and print the peak RSS in MiB. The inputs are
    random pixels, so reading the data set does not set the peak."""
    points, k = RSS_PROBES[mode]  # the chunked peak does not depend on k: 200 keeps the 1000 points quick
    model, x = load_model_and_points(run_dir, points, use_data=False)
    if mode != "baseline":
        chunk = k if mode == "unchunked" else None  # None: the automatic chunk
        iwae(model, x, IWAESettings(k=k, chunk_size=chunk), torch.Generator().manual_seed(0))
    print(peak_rss_mib())


def chunk_probe(mode: str, run_dir: str | None) -> None:
    """Child process, so that neither chunking inherits the other's heap: IWAE (k=2000) of 100 points
    with `chunk_size` CHUNK_PROBES[mode]; prints points/s and the minor page faults of that call."""
    model, x = load_model_and_points(run_dir, 100)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = timed(lambda: iwae(model, x, IWAESettings(k=2000, chunk_size=CHUNK_PROBES[mode]), torch.Generator().manual_seed(0)))
    print(100 / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM (Linux) starts afresh at exec; getrusage's
    ru_maxrss would keep the high-water mark of the parent that forked us."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--rss-probe", choices=list(RSS_PROBES), help=argparse.SUPPRESS)
    parser.add_argument("--chunk-probe", choices=list(CHUNK_PROBES), help=argparse.SUPPRESS)
    args = parse_cpu_args(parser, threads=1)
    if args.rss_probe:
        return rss_probe(args.rss_probe, args.run_dir)
    if args.chunk_probe:
        return chunk_probe(args.chunk_probe, args.run_dir)
    model, x = load_model_and_points(args.run_dir, 1000)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.subnormals}, "
          f"load average {os.getloadavg()[0]:.1f}, "
          f"model 784-500-20 ({'trained' if args.run_dir else 'random init'}), {'MNIST test' if os.environ.get('VAE_CLI_DATA') else 'random'} inputs")
    g = torch.Generator().manual_seed(0)

    fast = timed(lambda: iwae(model, x[:100], IWAESettings(k=5000), g)) / 100
    slow = timed(lambda: naive_iwae(model, x[:2], 5000, g)) / 2
    roof = matmul_roofline(layer_shapes(100 * 100, 100)) * 50 / 100  # 50 chunks of 100 samples x 100 points
    print(f"iwae k=5000          {1 / fast:9.2f} points/s   naive loop {1 / slow:7.3f} points/s   speed-up {slow / fast:6.0f}x"
          f"   matmul roofline {1 / roof:8.2f} points/s ({roof / fast:.0%} of it)")

    s = AISSettings(n_steps=50)
    fast = timed(lambda: ais(model, x[:50], s, g)) / 50
    slow = timed(lambda: naive_ais(model, x[:1], AISSettings(n_steps=50, n_chains=4), g)) * 4  # 4 of 16 chains
    scale = s.n_steps / AISSettings().n_steps
    print(f"ais T=50, 16 chains  {1 / fast:9.2f} points/s   naive loop {1 / slow:7.3f} points/s   speed-up {slow / fast:6.0f}x"
          f"   (default T=500: {scale / fast:.3f} points/s)")

    def probe(flag: str, mode: str) -> list[float]:
        """What a fresh process of this script prints with `flag mode` and this run's options."""
        options = ["--threads", str(args.threads), *(["--run-dir", args.run_dir] if args.run_dir else []),
                   *(["--keep-denormals"] if args.keep_denormals else [])]
        out = subprocess.run([sys.executable, __file__, flag, mode, *options], capture_output=True, text=True, check=True)
        return [float(v) for v in out.stdout.split()]

    (auto, auto_faults), (fixed, fixed_faults) = (probe("--chunk-probe", mode) for mode in CHUNK_PROBES)
    print(f"iwae k=2000, 100 points, each in a fresh process: automatic chunk ({samples_per_chunk(None, x[:100])} samples) "
          f"{auto:.2f} points/s, {auto_faults:,.0f} page faults; chunks of 100 samples {fixed:.2f} points/s, "
          f"{fixed_faults:,.0f} page faults: {auto / fixed:.2f}x")
    base, chunked, chunked_1000, unchunked = (probe("--rss-probe", mode)[0] for mode in RSS_PROBES)
    print(f"iwae peak RSS above the bare process: automatic chunk {chunked - base:5.0f} MiB at 20 points (k=5000) and "
          f"{chunked_1000 - base:5.0f} MiB at 1000 (k=200); unchunked {unchunked - base:5.0f} MiB at 20 points (k=5000) "
          f"({(unchunked - base) / max(chunked - base, 1):.0f}x)")

    bound = timed(lambda: evaluate_bound(model, x, "sgvb_b", 1, 1000, g), repeat=3)
    roof = matmul_roofline(layer_shapes(1000, 1000), repeat=3)
    print(f"test-set bound (L=1) {x.shape[0] / bound:9.0f} points/s   matmul roofline {x.shape[0] / roof:9.0f} points/s "
          f"({roof / bound:.0%} of it); 10,000 points: {bound * 10:.2f} s")


if __name__ == "__main__":
    main()
