"""Loaders: content hashes, the alternative file formats, the restricted unpickler, the download path."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest
import torch

from conftest import compose_config
from vae_cli import data as data_module
from vae_cli.data import load_dataset, read_pixels, safe_unpickle
from vae_cli.errors import UserError


def _dataset_cfg(*overrides):
    return compose_config(list(overrides)).dataset


def _write_idx(path, array: np.ndarray) -> None:
    """IDX: two zero bytes, type 0x08 (unsigned byte), ndim, big-endian sizes, then the bytes."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_pixels(shared_data):
    return read_pixels("mnist", shared_data, download=False)


@pytest.fixture(scope="module")
def idx_folder(mnist_pixels, tmp_path_factory):
    """The four IDX files made from the pickled split (60,000 = train then valid, as MNIST orders them)."""
    folder = tmp_path_factory.mktemp("idx")
    train = np.concatenate([mnist_pixels["train"], mnist_pixels["valid"]])
    _write_idx(folder / "train-images-idx3-ubyte.gz", train.reshape(-1, 28, 28))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(60000, np.uint8))
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", mnist_pixels["test"].reshape(-1, 28, 28))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10000, np.uint8))
    return folder


def test_mnist_pickle_loads_the_50k_10k_10k_split_in_unit_interval(shared_data):
    data = load_dataset(_dataset_cfg(f"dataset.root={shared_data}"), torch.device("cpu"))
    assert data.train.shape == (50000, 784) and data.test.shape == (10000, 784)
    assert data.train.dtype == torch.float32
    assert 0.0 <= data.train.min() and data.train.max() < 1.0  # pixel / 256
    assert torch.equal(data.train * 256, torch.round(data.train * 256))
    digest = hashlib.sha256((data.test * 256).to(torch.uint8).numpy().tobytes()).hexdigest()
    assert digest == data_module.CONTENT_SHA256[("mnist", "test")]


def test_idx_files_give_the_same_split(mnist_pixels, idx_folder):
    from_idx = read_pixels("mnist", idx_folder, download=False)
    for split in ("train", "valid", "test"):
        assert np.array_equal(from_idx[split], mnist_pixels[split])


def test_frey_pickle_and_mat_give_the_same_frames_and_the_sequential_split(shared_data, tmp_path):
    from scipy.io import savemat

    frames = read_pixels("frey", shared_data, download=False)["all"]
    assert frames.shape == (1965, 560)
    savemat(tmp_path / "frey_rawface.mat", {"ff": frames.T})  # Roweis' layout: one image a column
    assert np.array_equal(read_pixels("frey", tmp_path, download=False)["all"], frames)
    data = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={tmp_path}"), torch.device("cpu"))
    assert data.train.shape == (1500, 560) and data.test.shape == (465, 560) and data.image_shape == (28, 20)
    assert torch.equal(data.test[0] * 256, torch.tensor(frames[1500], dtype=torch.float32))  # frame order kept


def test_a_changed_pixel_fails_the_content_hash(mnist_pixels, idx_folder, tmp_path):
    for f in idx_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    test = mnist_pixels["test"].copy()
    test[123, 400] ^= 1
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test.reshape(-1, 28, 28))
    with pytest.raises(UserError, match="does not hold the expected mnist test pixels"):
        read_pixels("mnist", tmp_path, download=False)


def test_truncated_or_foreign_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(b"not a gzip file")
    with pytest.raises(UserError, match="could not read .*mnist.pkl.gz"):
        read_pixels("mnist", tmp_path, download=False)
    (tmp_path / "freyfaces.pkl").write_bytes(pickle.dumps([np.zeros((2, 3), np.float64)], protocol=2))
    with pytest.raises(UserError, match="uint8"):
        read_pixels("frey", tmp_path, download=False)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_the_unpickler_admits_arrays_and_refuses_code(tmp_path):
    arrays = [np.arange(6, dtype=np.uint8).reshape(2, 3), (np.ones(2, np.float32), 3)]
    assert np.array_equal(safe_unpickle(__import__("io").BytesIO(pickle.dumps(arrays, protocol=2)))[0], arrays[0])
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        safe_unpickle(__import__("io").BytesIO(pickle.dumps(_Exploit())))
    (tmp_path / "freyfaces.pkl").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UserError, match="could not read"):
        read_pixels("frey", tmp_path, download=False)


def test_absent_data_offline_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(UserError) as info:
        read_pixels("mnist", tmp_path, download=False)
    message = str(info.value)
    assert "mnist.pkl.gz" in message and "train-images-idx3-ubyte.gz" in message and "dataset.root=" in message
    assert "\n" not in message


def test_download_fetches_the_idx_files_with_checksums(idx_folder, tmp_path, monkeypatch):
    """The pooch path for real, against a local HTTP mirror serving IDX files (no internet here)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(idx_folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in idx_folder.iterdir()}
        monkeypatch.setattr(data_module, "MNIST_MIRRORS", ("http://127.0.0.1:1/dead/", f"http://127.0.0.1:{server.server_port}/"))
        monkeypatch.setattr(data_module, "MNIST_IDX_MD5", md5)
        target = tmp_path / "cache"
        pixels = read_pixels("mnist", target, download=True)
        assert sorted(p.name for p in target.iterdir()) == sorted(md5)
        assert pixels["train"].shape == (50000, 784)
        # a mirror serving a different file fails the checksum and says so in one line
        monkeypatch.setattr(data_module, "MNIST_IDX_MD5", {k: "0" * 32 for k in md5})
        with pytest.raises(UserError, match="could not download mnist"):
            read_pixels("mnist", tmp_path / "other", download=True)
    finally:
        server.shutdown()


def test_n_train_takes_the_first_points_and_binarization_modes(shared_data):
    full = load_dataset(_dataset_cfg(f"dataset.root={shared_data}"), torch.device("cpu"))
    sub = load_dataset(_dataset_cfg(f"dataset.root={shared_data}", "dataset.n_train=1000"), torch.device("cpu"))
    assert torch.equal(sub.train, full.train[:1000])
    static = load_dataset(_dataset_cfg(f"dataset.root={shared_data}", "dataset.n_train=1000", "dataset.binarize=static"), torch.device("cpu"))
    assert set(static.train.unique().tolist()) == {0.0, 1.0}
    assert abs(static.train.mean().item() - sub.train.mean().item()) < 0.01  # E[Bernoulli(p)] = p
    dynamic = load_dataset(_dataset_cfg(f"dataset.root={shared_data}", "dataset.n_train=1000", "dataset.binarize=dynamic"), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(100)
    first, second = dynamic.minibatch(idx, g), dynamic.minibatch(idx, g)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)  # fresh draws
    assert torch.equal(dynamic.train_eval, static.train) and torch.equal(dynamic.test, static.test)  # fixed eval sets
    with pytest.raises(UserError, match="exceeds the 50000"):
        load_dataset(_dataset_cfg(f"dataset.root={shared_data}", "dataset.n_train=50001"), torch.device("cpu"))
