"""Training-step throughput of vae-train against two hand-written loops and the GEMM bound.

Side by side in one process, interleaved over rounds (rates: medians; ratios: the median of each
round's ratio, with its range), at the paper's MNIST model (784-500-Nz, Nz=20, tanh, Bernoulli
decoder) for each minibatch size M:

- `vae-cli`: the package's own step, `jobs.train.build_learner` with vae-train's defaults (the
  author's Adagrad with its warm-up, minibatches with replacement, SGVB B, the divergence guard's
  flag and bound) and `Learner.step()`, exactly what the loop runs per step; `vae-cli compiled` is
  the same with `speed.compile=true` (each update one graph, `accel/compiled.py`; compiled before the
  timing, the time it took is printed).
- `lean`: the same math written by hand as tightly as eager PyTorch allows: one tensor, `index_select`
  of a permutation, BCE with logits, the KL in closed form, fused Adagrad with the weight decay M/N.
- `examples`: the loop of pytorch/examples' VAE (TensorDataset + shuffling DataLoader, sigmoid output,
  BCE on probabilities + KLD summed, PyTorch's default Adagrad, `loss.item()` every step).
- `gemm bound`: the matrix products of one step alone at the model's shapes (forward, and the
  input and weight gradients of backward), timed back to back: no model can step faster.

With `--method wake_sleep` the two vae-cli runners train wake-sleep instead and only the compiled /
eager ratio is printed: the reference loops and the GEMM bound are AEVB's.

Then, unless `--no-rss`, the peak resident memory of real `vae-train` runs on all of MNIST, eager
and compiled (the console script in a child process, 10^5 samples with its evaluations of the whole
train and test sets, checkpoints and figures), against the target of 1 GB.

Usage: python benchmarks/train_throughput.py [--batch-sizes 100 1000] [--rounds 12] [--threads N] [--keep-denormals] [--no-rss]
                                            [--method aevb|wake_sleep]
Prints datapoints/s, the ratios of vae-cli to the lean and examples loops and its share of the bound,
and at M = 100 whether the eager step meets its target (0.9 of the lean loop; the median decides).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vae_cli.data import Dataset, load_dataset
from vae_cli.jobs import configure_cpu
from vae_cli.jobs.train import build_learner
from vae_cli.optim import NonFiniteGuard

D, H, J = 784, 500, 20
TARGETS = {100: {"lean": 0.9}}  # the eager step's, at M = 100; the others are reported


def train_config(*overrides: str):
    """vae-train's config for the benchmark's model (N_z = J), with `overrides`."""
    from hydra import compose, initialize_config_module

    from vae_cli.config import register_configs

    register_configs()
    with initialize_config_module(config_module="vae_cli.conf", version_base="1.3"):
        return compose("train", overrides=[f"model.latent_dim={J}", *overrides])


def mnist_or_noise(n: int) -> tuple[torch.Tensor, object, bool]:
    """Real MNIST training pixels when the data folder has them or can download them (as vae-train
    does), else uniform noise of that shape; vae-train's config for the benchmark's model; whether it
    was MNIST."""
    cfg = train_config()
    try:
        return load_dataset(cfg.dataset, torch.device("cpu")).train[:n], cfg, True
    except Exception as e:  # noqa: BLE001 - a benchmark falls back to noise of the same shape
        print(f"(no MNIST: {str(e)[:100]}...; timing on uniform noise of the same shape)")
        return torch.rand(n, D), cfg, False


class ExamplesVAE(nn.Module):
    """pytorch/examples' VAE with the paper's sizes (tanh, one hidden layer)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(D, H), nn.Linear(H, J), nn.Linear(H, J)
        self.fc3, self.fc4 = nn.Linear(J, H), nn.Linear(H, D)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(torch.tanh(self.fc3(z)))), mu, logvar


def examples_runner(train_x: torch.Tensor, batch_size: int):
    model = ExamplesVAE()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.02)
    loader = DataLoader(TensorDataset(train_x), batch_size=batch_size, shuffle=True)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            (x,) = next(batches)
        except StopIteration:
            batches = iter(loader)
            (x,) = next(batches)
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def lean_runner(train_x: torch.Tensor, batch_size: int):
    """vae-cli's math (the paper's model, SGVB B, L = 1, Adagrad, weight prior M/N on the matrices) by hand."""
    n, M = train_x.shape[0], batch_size
    encoder, heads, decoder, out = nn.Linear(D, H), nn.Linear(H, 2 * J), nn.Linear(J, H), nn.Linear(H, D)
    layers = (encoder, heads, decoder, out)
    weights, biases = [m.weight for m in layers], [m.bias for m in layers]
    optimizer = torch.optim.Adagrad([{"params": weights, "weight_decay": 1.0 / n}, {"params": biases}], lr=0.02, fused=True)
    order, position = torch.randperm(n), n

    def step() -> None:
        nonlocal order, position
        if position + M > n:
            order, position = torch.randperm(n), 0
        x = train_x.index_select(0, order[position : position + M])
        position += M
        mu, log_var = heads(torch.tanh(encoder(x))).chunk(2, -1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        logits = out(torch.tanh(decoder(z)))
        kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum()
        loss = (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + kl) / M  # -(1/N) eq. (8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def vae_cli_runner(train_x: torch.Tensor, cfg, batch_size: int, n_models: int = 1, seed: int = 0, device: str = "cpu"):
    """One step of `vae-train` with `seed=seed` (cfg's method, AEVB by default): of one model, or of a
    stack of `n_models` (speed.n_models), with the guard's one host read per `progress_every` steps."""
    from omegaconf import OmegaConf

    train_x = train_x.to(device)
    data = Dataset("mnist", train_x, train_x[:1000], train_x, (28, 28), "none")
    cfg = OmegaConf.merge(cfg, {"seed": seed, "trainer": {"batch_size": batch_size}, "speed": {"n_models": n_models}})
    learner = build_learner(cfg, data, torch.device(device))
    guard, steps = NonFiniteGuard(torch.device(device)), 0

    def step() -> None:
        nonlocal steps
        guard.observe(*learner.step())
        steps += 1
        if steps % cfg.trainer.progress_every == 0:
            guard.collect(steps)

    return step


def gemm_runner(batch_size: int, device: str = "cpu"):
    """The step's matrix products: 4 forward, and dX (3; none for the input layer) + dW (4) backward."""
    M = batch_size
    shapes = [  # (rows, inner, cols) of every product in one training step
        (M, D, H), (M, H, 2 * J), (M, J, H), (M, H, D),  # forward: encoder, heads, decoder, output
        (M, D, H), (M, H, J), (M, 2 * J, H),  # backward dX: output, decoder hidden, heads
        (D, M, H), (H, M, J), (2 * J, M, H), (H, M, D),  # backward dW (transposed products)
    ]
    operands = [(torch.rand(a, b, device=device), torch.rand(b, c, device=device), torch.empty(a, c, device=device)) for a, b, c in shapes]
    flops = sum(2 * a * b * c for a, b, c in shapes)

    def step() -> None:
        for a, b, out in operands:
            torch.mm(a, b, out=out)

    return step, flops


def rate(step, batch_size: int, min_seconds: float, sync=lambda: None) -> float:
    """Datapoints per second of `step` over at least `min_seconds` (after a warm-up); `sync` waits for
    queued device work (torch.cuda.synchronize on a GPU)."""
    for _ in range(3):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        step()
        n += 1
    sync()
    return n * batch_size / (time.perf_counter() - start)


def training_run_peak_rss_mib(threads: int | None, *overrides: str) -> float:
    """Peak RSS of one `vae-train` process training the paper's MNIST model: that child's own resource
    usage (`wait4`), not the maximum over every child of this process (torch.compile's workers are some)."""
    with tempfile.TemporaryDirectory() as folder:
        args = [str(Path(sys.executable).parent / "vae-train"), "trainer.max_samples=1e5", "trainer.progress=false",
                f"hydra.run.dir={folder}/run", *([f"speed.threads={threads}"] if threads else []), *overrides]
        with open(Path(folder) / "stderr", "w+") as err:
            child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode:
                err.seek(0)
                last = (err.read().strip().splitlines() or [""])[-1][:300]
                sys.exit(f"peak RSS not measured: vae-train exited with {child.returncode}: {last}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def interleaved_rates(runners: dict, datapoints: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Datapoints/s of each runner (each call handles `datapoints`) in every round, timed in turn."""
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, step in runners.items():
            rates[name].append(rate(step, datapoints, seconds))
    return rates


def per_round_ratio(rates: dict[str, list[float]], a: str, b: str, unit: str = "", target: float | None = None) -> str:
    """The median over rounds of runner a's rate over runner b's in the same round, with the lowest
    and the highest, and whether the median meets `target`. Runners of one round are timed seconds
    apart, so a machine whose speed drifts over minutes (a shared host) moves both sides of each
    ratio together."""
    ratios = sorted(x / y for x, y in zip(rates[a], rates[b], strict=True))
    median = statistics.median(ratios)
    verdict = "" if target is None else f"  target >= {target}{unit}: {'met' if median >= target else 'NOT met'}"
    return f"{median:.2f}{unit}  (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}){verdict}"


def parse_cpu_args(parser: argparse.ArgumentParser, threads: int | None = None) -> argparse.Namespace:
    """The CPU options every benchmark takes (--threads, --keep-denormals), parsed and applied as
    vae-train and vae-eval apply them (`jobs.configure_cpu`), before torch starts its threads."""
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="as speed.flush_denormals=false: every runner computes on subnormal floats")
    args = parser.parse_args()
    configure_cpu(args.threads, flush_denormals=not args.keep_denormals)
    args.subnormals = "subnormals kept" if args.keep_denormals else "subnormals flushed"  # for the header line
    return args


def parse_timing_args(parser: argparse.ArgumentParser, rounds: int) -> argparse.Namespace:
    """The options every training benchmark takes: --rounds, --seconds and the CPU options."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per implementation per round")
    return parse_cpu_args(parser)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory run of vae-train")
    parser.add_argument("--method", choices=["aevb", "wake_sleep"], default="aevb")
    args = parse_timing_args(parser, rounds=12)
    if args.method != "aevb":
        return compiled_against_eager(args)
    train_x, cfg, found = mnist_or_noise(50_000)
    compiled_cfg = train_config("speed.compile=true")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.subnormals}; "
          f"MNIST model {D}-{H}-{J}, Adagrad, SGVB B, L=1; {args.rounds} interleaved rounds, median rates, ratios per round")
    for batch_size in args.batch_sizes:
        runners = {"vae-cli": vae_cli_runner(train_x, cfg, batch_size), "vae-cli compiled": vae_cli_runner(train_x, compiled_cfg, batch_size),
                   "lean": lean_runner(train_x, batch_size), "examples": examples_runner(train_x, batch_size)}
        start = time.perf_counter()
        for _ in range(cfg.optimizer.warmup_steps + 1):  # compiles at its first step, and again when Adagrad's
            runners["vae-cli compiled"]()               # warm-up ends (the graph holds its learning rate)
        compile_seconds = time.perf_counter() - start
        gemm, flops = gemm_runner(batch_size)
        runners["gemm bound"] = gemm
        rates = interleaved_rates(runners, batch_size, args.rounds, args.seconds)
        med = {name: statistics.median(r) for name, r in rates.items()}
        print(f"\nM = {batch_size}  (step GEMMs: {flops / batch_size / 1e6:.2f} MFLOP per datapoint, "
              f"{med['gemm bound'] * flops / batch_size / 1e9:.0f} GFLOP/s in the bound; compiling took {compile_seconds:.1f} s)")
        for name, value in med.items():
            print(f"  {name:<16} {value:>10,.0f} datapoints/s")
        for name in ("vae-cli", "vae-cli compiled"):
            target = TARGETS.get(batch_size, {}).get("lean") if name == "vae-cli" else None
            print(f"  {name + ' / lean loop':<33}: {per_round_ratio(rates, name, 'lean', 'x', target)}")
            print(f"  {name + ' / examples loop':<33}: {per_round_ratio(rates, name, 'examples', 'x')}")
            print(f"  {name + ' / GEMM bound':<33}: {per_round_ratio(rates, name, 'gemm bound', '')}")
    if args.no_rss:
        return
    if not found:
        print("\npeak RSS not measured: vae-train needs the MNIST files (set VAE_CLI_DATA, or pass --no-rss)")
        return
    print()
    kept = ("speed.flush_denormals=false",) if args.keep_denormals else ()
    for overrides in (kept, (*kept, "speed.compile=true")):
        peak = training_run_peak_rss_mib(args.threads, *overrides)
        print(f"peak RSS of {' '.join(('vae-train', *overrides))} on MNIST (Nz={J}, 1e5 samples, whole-set evaluations): "
              f"{peak:,.0f} MiB (target < 1024 MiB: {'met' if peak < 1024 else 'NOT met'})")


def compiled_against_eager(args: argparse.Namespace) -> None:
    """`--method wake_sleep`: vae-cli's step of that method, eager against speed.compile=true."""
    train_x, _, _ = mnist_or_noise(50_000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.subnormals}; "
          f"MNIST model {D}-{H}-{J}, Adagrad, method={args.method}; {args.rounds} interleaved rounds, median rates, ratios per round")
    for batch_size in args.batch_sizes:
        runners = {name: vae_cli_runner(train_x, train_config(f"method={args.method}", f"speed.compile={flag}"), batch_size)
                   for name, flag in (("vae-cli", "false"), ("vae-cli compiled", "true"))}
        start = time.perf_counter()
        runners["vae-cli compiled"]()  # compiles at its first step
        print(f"\nM = {batch_size}  (compiling took {time.perf_counter() - start:.1f} s)")
        rates = interleaved_rates(runners, batch_size, args.rounds, args.seconds)
        for name, r in rates.items():
            print(f"  {name:<16} {statistics.median(r):>10,.0f} datapoints/s")
        print(f"  {'vae-cli compiled / vae-cli':<33}: {per_round_ratio(rates, 'vae-cli compiled', 'vae-cli', 'x')}")


if __name__ == "__main__":
    main()
