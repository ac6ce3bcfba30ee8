"""vae-cli: a reproducible command-line experiment runner for Auto-Encoding Variational Bayes
(Kingma & Welling, 2013), and its Python API: `load_run(path)` (a trained run: config, metrics, model,
encode / decode / sample / bound / log-likelihood) and `load_sweep(path)` (a sweep's runs grouped as
vae-report groups them). Reading order of the code: distributions -> models -> estimators -> methods ->
loop; README's code map."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"
__all__ = ["load_run", "load_sweep", "__version__"]

if TYPE_CHECKING:
    from .api import load_run, load_sweep


def __getattr__(name: str):
    """`load_run` and `load_sweep` import torch: loaded on first use, so the console scripts start fast."""
    if name in ("load_run", "load_sweep"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vae_cli' has no attribute {name!r}")
