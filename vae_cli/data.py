"""MNIST and Frey Face, the paper's data sets (AEVB §5), as device tensors in [0, 1).

Pixels are the 8-bit grey levels divided by 256 (PAPER.md §10.3), read and verified by `data_files.py`.
Frey Face's 1965 frames are split into training and held-out frames after a seeded shuffle (the
author's split, PAPER.md §12.4) or by frame order (`split_frames`). Minibatches X^M are rows of the
training tensor picked by `MinibatchSampler` (no DataLoader: the data fit in memory and stay on the
device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data_files import IMAGE_SHAPES, default_root, read_pixels
from .errors import UserError


@dataclass
class Dataset:
    """Train and test pixels as float32 device tensors, one image a row, values in [0, 1)."""

    name: str
    train: torch.Tensor  # (N, D)
    test: torch.Tensor  # (N_test, D)
    train_eval: torch.Tensor  # the training set as evaluated: `train`, or one fixed binarization of it
    image_shape: tuple[int, int]
    binarize: str  # none | static | dynamic

    @property
    def n_train(self) -> int:
        return self.train.shape[0]

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def minibatch(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """X^M for the indices `idx` (M,) -> (M, D); with dynamic binarization a fresh Bernoulli draw."""
        x = self.train.index_select(0, idx)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x, generator=generator)
        return x


@dataclass
class MinibatchSampler:
    """The indices of X^M, M of the N training points per step (Algorithm 1): drawn uniformly with
    replacement ([K], PAPER.md §12.3), or consecutive slices of a permutation drawn anew each epoch
    (PAPER.md §10.8; the last partial slice is dropped, so every step has exactly M points).
    Its state is checkpointed, so a resumed run draws the same minibatches."""

    n: int  # N
    batch_size: int  # M
    with_replacement: bool
    permutation: torch.Tensor | None = None  # this epoch's order (epochs only)
    position: int = 0  # next index into it

    def next(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if self.with_replacement:
            return torch.randint(0, self.n, (self.batch_size,), generator=generator).to(device)
        if self.permutation is None or self.position + self.batch_size > self.n:
            self.permutation, self.position = torch.randperm(self.n, generator=generator).to(device), 0
        idx = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"permutation": None if self.permutation is None else self.permutation.cpu(), "position": self.position}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.permutation = None if state["permutation"] is None else state["permutation"].to(device)
        self.position = state["position"]


FREY_SPLITS = ("shuffled", "sequential")


def split_frames(frames: np.ndarray, n_train: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frey Face's train and held-out frames. `shuffled`: the frames in a random order drawn from
    `seed`, then the first `n_train` (the author's split: 1600 / 365, PAPER.md §12.4); `sequential`:
    the first `n_train` frames of the video, the rest held out (PAPER.md §10.3), which puts a
    different stretch of the video in the test set."""
    if not 0 < n_train < frames.shape[0]:
        raise UserError(f"dataset.train_frames={n_train} must lie in 1..{frames.shape[0] - 1}")
    if split == "shuffled":
        order = torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(seed)).numpy()
        frames = frames[order]
    elif split != "sequential":
        raise ValueError(f"unknown Frey split {split!r}; choose one of {', '.join(FREY_SPLITS)}")
    return frames[:n_train], frames[n_train:]


def load_dataset(cfg, device: torch.device) -> Dataset:
    """The data set described by the `dataset` config group, verified, on `device`."""
    root = Path(cfg.root).expanduser() if cfg.root else default_root()
    pixels = read_pixels(cfg.name, root, cfg.download)
    if cfg.name == "frey":
        train, test = split_frames(pixels["all"], cfg.train_frames, cfg.split, cfg.split_seed)
    else:
        train, test = pixels["train"], pixels[cfg.test_split]
    if cfg.n_train is not None:
        if cfg.n_train > train.shape[0]:
            raise UserError(f"dataset.n_train={cfg.n_train} exceeds the {train.shape[0]} training images; use at most {train.shape[0]}")
        train = train[: cfg.n_train]  # the first N points (Fig. 3 uses N = 1000)
    to_unit = lambda a: torch.from_numpy(a.astype(np.float32) / np.float32(256.0))  # noqa: E731
    train_x, test_x = to_unit(train), to_unit(test)
    train_eval = train_x
    binarize = cfg.binarize if cfg.name == "mnist" else "none"  # real-valued Frey Face is never binarized
    if binarize in ("static", "dynamic"):
        # one fixed draw of each set for evaluation; static binarization also trains on it
        g = torch.Generator().manual_seed(cfg.binarize_seed)
        test_x, train_eval = torch.bernoulli(test_x, generator=g), torch.bernoulli(train_x, generator=g)
        if binarize == "static":
            train_x = train_eval
    train_x, test_x = train_x.to(device), test_x.to(device)
    train_eval = train_eval.to(device) if binarize == "dynamic" else train_x
    return Dataset(cfg.name, train_x, test_x, train_eval, IMAGE_SHAPES[cfg.name], binarize)
