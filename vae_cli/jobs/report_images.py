"""The model images of `vae-report`, from the runs' checkpoints (PAPER.md §7, Figs. 4 and 5):
- Figure 4: decoder means over an n x n grid of the unit square mapped through the inverse Gaussian CDF,
  one file per group with N_z = 2 (20x20 for MNIST, 10x10 for Frey Face, as in the paper);
- Figure 5: 10x10 decoder means of z ~ N(0, I), one panel per group of MNIST models.
The paper's Figs. 4 and 5 show AEVB models; groups of AEVB and full-VB runs are drawn, each from its
first seed with a readable checkpoint (`saved.read_checkpoint`, `saved.rebuild_model`). Runs whose
checkpoint cannot be read are returned as missing, with the reason, for these figures only.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..data_files import IMAGE_SHAPES
from ..errors import UserError
from ..figures import tile
from ..paper_values import DATA_NAMES, METHOD_LABELS
from ..sweep import Group, Run, differing, file_name, samples_text
from .report_figures import DPI, save_figure

IMAGE_METHODS = ("aevb", "full_vb")  # the methods of the paper's Figs. 4-5 (and App. F's variant of AEVB)


def trained_model(group: Group, missing: list[tuple[Run, str]]):
    """(run, model, samples trained) of the group's first seed whose checkpoint rebuilds; the runs
    tried before it go to `missing` with the reason; None when no run has one."""
    import torch

    from ..saved import read_checkpoint, rebuild_model

    shape = IMAGE_SHAPES[group.get("dataset.name")]
    for run in group.runs:
        try:
            cfg, state = read_checkpoint(run.path, torch.device("cpu"))
            model = rebuild_model(cfg, state, shape[0] * shape[1], torch.device("cpu"), run.member or 0)
            return run, model, int((state.get("progress") or {}).get("samples", run.samples))
        except UserError as e:
            missing.append((run, f"no model for Figs. 4-5: {e}"))
    return None


def manifold_grid(model, n: int):
    """Decoder means over an n x n grid of the unit square mapped through the inverse Gaussian CDF
    (Fig. 4): z = Phi^-1((k + 1/2) / n), k = 0..n-1, both axes (the endpoints 0, 1 excluded)."""
    import torch

    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z1d = torch.special.ndtri(u).float()
    z = torch.stack(torch.meshgrid(z1d.flip(0), z1d, indexing="ij"), -1).reshape(-1, 2)  # rows: z_2 top to bottom
    with torch.no_grad():
        return model.decoder(z).mean, z1d


def _mosaic(images, dataset: str, n_cols: int):
    pixels = images.detach().float().clamp(0, 1).cpu().numpy().reshape(-1, *IMAGE_SHAPES[dataset])
    return tile(1.0 - pixels if dataset == "mnist" else pixels, n_cols)  # MNIST dark on white, as the paper


def _image_axes(fig, mosaic, left: float, top: float, target: float = 560):
    """Axes at (`left`, `top`) inches from the figure's left and top edges that show `mosaic` at a whole
    number of PNG pixels per image pixel (about `target` pixels across), so the tiles' white borders
    stay even."""
    height, width = mosaic.shape
    scale = max(1, round(target / max(height, width)))
    w, h = width * scale / DPI, height * scale / DPI
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes([left / fig_w, 1 - (top + h) / fig_h, w / fig_w, h / fig_h])
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    return ax


def _size(mosaic, target: float = 560) -> tuple[float, float]:
    """The inches `_image_axes` gives `mosaic`."""
    height, width = mosaic.shape
    scale = max(1, round(target / max(height, width)))
    return width * scale / DPI, height * scale / DPI


def _distinct(groups: list[Group], group: Group, leave_out: tuple[str, ...] = ()) -> str:
    """What tells `group` apart from the others of `groups`: its values of the keys they differ in."""
    return group.describe(differing(groups, leave_out))


def draw_figure_4(plt, groups: list[Group], out: Path, missing: list) -> list[Path]:
    """Fig. 4 per group with N_z = 2: fig4_<data>.png, or fig4_<data>_<what differs>.png when a data
    set has several such groups."""
    paths = []
    candidates = [g for g in groups if g.get("model.latent_dim") == 2 and g.get("method.name") in IMAGE_METHODS]
    for dataset in dict.fromkeys(g.get("dataset.name") for g in candidates):
        same = [g for g in candidates if g.get("dataset.name") == dataset]
        for group in same:
            found = trained_model(group, missing)
            if found is None:
                continue
            run, model, samples = found
            n = 20 if dataset == "mnist" else 10
            images, z1d = manifold_grid(model, n)
            mosaic = _mosaic(images, dataset, n)
            w, h = _size(mosaic)
            fig = plt.figure(figsize=(w + 0.9, h + 1.4))
            ax = _image_axes(fig, mosaic, left=0.7, top=0.8)
            tile_h, tile_w = IMAGE_SHAPES[dataset]
            ends = [tile_w / 2 - 0.5, (n / 2) * (tile_w + 1) - 1, (n - 1) * (tile_w + 1) + tile_w / 2 - 0.5]
            ax.set_xticks(ends, [f"{z1d[0]:.2f}", "0", f"{z1d[-1]:.2f}"], fontsize=7)
            ends = [tile_h / 2 - 0.5, (n / 2) * (tile_h + 1) - 1, (n - 1) * (tile_h + 1) + tile_h / 2 - 0.5]
            ax.set_yticks(ends, [f"{z1d[-1]:.2f}", "0", f"{z1d[0]:.2f}"], fontsize=7)
            ax.set_xlabel(r"$z_1 = \Phi^{-1}(u_1)$", fontsize=8)
            ax.set_ylabel(r"$z_2 = \Phi^{-1}(u_2)$", fontsize=8)
            what = textwrap.fill(_distinct(same, group), int(w / 0.06))
            ax.set_title(f"Learned {DATA_NAMES.get(dataset, dataset)} manifold ({METHOD_LABELS.get(group.get('method.name'))}, $N_z$ = 2)"
                         + (f"\n{what}" if what else "") + f"\nseed {run.seed}, {samples_text(samples)} training samples", fontsize=8)
            name = f"fig4_{dataset}" + (f"_{file_name(what)}" if len(same) > 1 else "")
            paths += save_figure(fig, out, name, plt)
    return paths


def draw_figure_5(plt, groups: list[Group], out: Path, missing: list) -> list[Path]:
    """10x10 decoder means of z ~ N(0, I) for each group of MNIST models, side by side (five a row)."""
    import torch

    panels = []
    candidates = [g for g in groups if g.get("dataset.name") == "mnist" and g.get("method.name") in IMAGE_METHODS]
    for group in candidates:
        found = trained_model(group, missing)
        if found is not None:
            run, model, samples = found
            z = torch.randn((100, group.get("model.latent_dim")), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                panels.append((group, run, samples, _mosaic(model.decoder(z).mean, "mnist", 10)))
    if not panels:
        return []
    n_cols = min(5, len(panels))
    w, h = _size(panels[0][3], target=300)
    titles = []
    for k, (group, run, samples, _) in enumerate(panels):
        what = textwrap.fill(_distinct([g for g, *_ in panels], group, leave_out=("model.latent_dim",)), int(w / 0.055))
        titles.append(f"({chr(ord('a') + k)}) {group.get('model.latent_dim')}-D latent space" + (f"\n{what}" if what else "")
                      + f"\nseed {run.seed}, {samples_text(samples)} samples")
    top = 0.2 + 0.14 * max(t.count("\n") + 1 for t in titles)
    cell_w, cell_h = w + 0.3, h + top + 0.1
    fig = plt.figure(figsize=(n_cols * cell_w, -(-len(panels) // n_cols) * cell_h))
    for k, (title, (_, _, _, mosaic)) in enumerate(zip(titles, panels)):
        row, col = divmod(k, n_cols)
        ax = _image_axes(fig, mosaic, left=col * cell_w + 0.15, top=row * cell_h + top, target=300)
        ax.axis("off")
        ax.set_title(title, fontsize=7)
    return save_figure(fig, out, "fig5", plt)
