"""What `vae-eval` writes and prints: the summary of an estimate over a split, its files in the run's
`eval/` folder (never over an earlier result), and the one-row table."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..likelihood import Estimate
from ..runs import atomic_write_bytes

EVAL_DIR = "eval"
LABELS = {".npy": "estimates", ".npz": "per_point", ".json": "summary", ".png": "figure", ".pdf": "figure_pdf"}


def summarise(result: Estimate, exact: torch.Tensor | None, seconds: float) -> dict:
    """Means over datapoints: the estimate with its standard error over datapoints and its Monte
    Carlo standard error (sqrt of the summed per-datapoint variances, over n)."""
    log_px, n = result.log_px.double().cpu(), result.log_px.numel()
    row = {
        "points": n,
        "log_px": log_px.mean().item(),
        "std_err": log_px.std().item() / math.sqrt(n) if n > 1 else None,
        "mc_std_err": result.mc_std_err.double().pow(2).sum().sqrt().item() / n,
        "seconds": round(seconds, 3),
        "points_per_second": round(n / max(seconds, 1e-9), 3),
        "diagnostics": {k: v.double().mean().item() for k, v in result.diagnostics.items()},
    }
    if exact is not None:
        gap = log_px - exact.double().cpu()
        row.update(exact_log_px=exact.double().mean().item(), estimate_minus_exact=gap.mean().item(),
                   estimate_minus_exact_std_err=gap.std().item() / math.sqrt(n) if n > 1 else None)
    return json_safe(row)


def json_safe(value):
    """NaN and infinities (e.g. a standard error from one point) as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_files(run_dir: Path, stem: str, contents: dict[str, bytes], summary: dict | None = None) -> dict[str, str]:
    """`<stem>-NNN<suffix>` in <run_dir>/eval/ for each suffix of `contents` (and `.json` of `summary`),
    with the first NNN no file uses yet: the first file claims the name (written only if absent), the
    others follow; each file atomically and never over an existing one."""
    folder = run_dir / EVAL_DIR
    suffixes = [*contents, *([".json"] if summary is not None else [])]
    for i in range(1, 100_000):
        base = folder / f"{stem}-{i:03d}"
        files = {s: base.with_name(base.name + s) for s in suffixes}
        if any(f.exists() for f in files.values()):
            continue
        first, *rest = contents
        try:
            atomic_write_bytes(files[first], contents[first], overwrite=False)
        except FileExistsError:  # another vae-eval took this name a moment ago
            continue
        for suffix in rest:
            atomic_write_bytes(files[suffix], contents[suffix], overwrite=False)
        if summary is not None:
            summary["files"] = {LABELS.get(suffix, suffix): files[suffix].name for suffix in suffixes}
            atomic_write_bytes(files[".json"], (json.dumps(json_safe(summary), indent=2) + "\n").encode(), overwrite=False)
        return {k: str(f) for k, f in files.items()}
    raise UserError(f"{folder} holds too many results named {stem}-*; move some away")


def write_result(run_dir: Path, stem: str, summary: dict, result: Estimate, exact: torch.Tensor | None) -> dict:
    """The estimates (.npy, nats per datapoint), per-point details (.npz) and the summary (.json)."""
    per_point = {"mc_std_err": result.mc_std_err, **result.diagnostics, **({"exact_log_px": exact} if exact is not None else {})}
    per_point = {k: v.double().cpu().numpy() for k, v in per_point.items()}
    return write_files(run_dir, stem, {".npy": npy(result.log_px.double().cpu().numpy()), ".npz": npz(per_point)}, summary)


def print_table(s: dict) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    header = f"{'estimator':<11} {'split':<6} {'points':>7} {'log p(x)':>10} {'SE(data)':>9} {'MC SE':>8} {'seconds':>9}"
    line = (f"{s['estimator']:<11} {s['split']:<6} {s['points']:>7} {fmt(s['log_px'], '10.3f')} "
            f"{fmt(s['std_err'], '9.3f')} {fmt(s['mc_std_err'], '8.4f')} {s['seconds']:>9.1f}")
    if "exact_log_px" in s:
        header += f" {'exact':>10} {'est-exact':>10}"
        line += f" {s['exact_log_px']:10.3f} {s['estimate_minus_exact']:10.4f}"
    if "theta" in s:
        header += f" {'theta':>10}"
        line += f" {s['theta']:>10}"
    if "member" in s:
        header += f" {'member':>6} {'of seed':>7}"
        line += f" {s['member']:>6} {s['member_seed']:>7}"
    print(f"{header}\n{line}")
    curve = sorted((int(name[len("iwae_k"):]), v) for name, v in s["diagnostics"].items() if name.startswith("iwae_k"))
    if curve:  # likelihood.k_curve=true: the estimate from the first k samples, k = 1, 10, ..., likelihood.k
        print(f"\n{'k':>7} {'log p(x)':>10}  (IWAE from the first k samples of each point)")
        print("\n".join(f"{k:>7} {fmt(v, '10.3f')}" for k, v in curve))
