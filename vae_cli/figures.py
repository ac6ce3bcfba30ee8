"""Image grids: reconstructions and samples from the prior at the end of a run (PAPER.md §7, Fig. 5).

Images are decoder means (Bernoulli probabilities or Gaussian means), drawn dark on white as in the
paper's figures, written as PNG with matplotlib's Agg backend (no display needed), atomically like
every file of a run folder (`runs.atomic_write_bytes`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .runs import atomic_write_bytes


def tile(images: np.ndarray, n_cols: int) -> np.ndarray:
    """(n, H, W) images in [0, 1] to one (rows*H, n_cols*W) mosaic, one pixel of white between tiles."""
    n, h, w = images.shape
    n_rows = -(-n // n_cols)
    canvas = np.ones((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1))
    for k, img in enumerate(images):
        r, c = divmod(k, n_cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return canvas


def save_grid(images: torch.Tensor, image_shape: tuple[int, int], n_cols: int, path: Path, dark_on_white: bool = True) -> Path:
    """Save rows of `images` (n, H*W) as a PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = images.detach().float().clamp(0, 1).cpu().numpy().reshape(-1, *image_shape)
    mosaic = tile(1.0 - pixels if dark_on_white else pixels, n_cols)
    png = io.BytesIO()
    plt.imsave(png, mosaic, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    atomic_write_bytes(path, png.getvalue())
    return path


def figure_paths(fig_dir: Path, reconstructions: bool = True) -> list[Path]:
    """The files `save_run_figures` writes into `fig_dir`."""
    return [fig_dir / name for name in (["reconstructions.png"] if reconstructions else []) + ["samples.png"]]


@torch.no_grad()
def save_run_figures(model, data, fig_dir: Path, generator: torch.Generator, reconstructions: bool = True) -> list[Path]:
    """reconstructions.png (test images above their decoded means; only for a model whose encoder
    was trained) and samples.png (10x10 prior draws)."""
    x = data.test[:10]
    z = torch.randn((100, model.latent_dim), generator=generator, device=x.device)
    grids = [model.decoder(z).mean]
    if reconstructions:
        grids.insert(0, torch.cat([x, model.decoder(model.encoder(x).mean).mean]))
    return [save_grid(g, data.image_shape, 10, path) for g, path in zip(grids, figure_paths(fig_dir, reconstructions))]
