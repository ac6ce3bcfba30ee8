"""Loaders: content hashes, the alternative file formats, the restricted unpickler, the download path;
Frey Face's two splits and the minibatch sampler's two modes."""

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
from vae_cli import data_files
from vae_cli.data import MinibatchSampler, load_dataset, split_frames
from vae_cli.data_files import read_pixels, safe_unpickle
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
    assert digest == data_files.CONTENT_SHA256[("mnist", "test")]
    valid = load_dataset(_dataset_cfg(f"dataset.root={shared_data}", "dataset.test_split=valid"), torch.device("cpu"))
    assert torch.equal(valid.train, data.train) and valid.test.shape == (10000, 784)
    digest = hashlib.sha256((valid.test * 256).to(torch.uint8).numpy().tobytes()).hexdigest()
    assert digest == data_files.CONTENT_SHA256[("mnist", "valid")]


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
    data = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={tmp_path}", "reading=paper_text"), torch.device("cpu"))
    assert data.train.shape == (1500, 560) and data.test.shape == (465, 560) and data.image_shape == (28, 20)
    assert torch.equal(data.train[0] * 256, torch.tensor(frames[0], dtype=torch.float32))  # frame order kept
    assert torch.equal(data.test[0] * 256, torch.tensor(frames[1500], dtype=torch.float32))


def test_frey_default_is_the_authors_shuffled_1600_split(shared_data):
    """PAPER.md §12.4: the 1965 frames in a seeded random order, 1600 train and 365 held out."""
    frames = read_pixels("frey", shared_data, download=False)["all"]
    data = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={shared_data}"), torch.device("cpu"))
    assert data.train.shape == (1600, 560) and data.test.shape == (365, 560)
    as_uint8 = lambda x: (x * 256).to(torch.uint8).numpy()  # noqa: E731
    train, test = as_uint8(data.train), as_uint8(data.test)
    assert sorted(map(bytes, np.concatenate([train, test]))) == sorted(map(bytes, frames))  # every frame once
    assert not np.array_equal(train[:10], frames[:10])  # not the video's order
    again = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={shared_data}"), torch.device("cpu"))
    assert torch.equal(again.train, data.train) and torch.equal(again.test, data.test)  # the same split every time
    other = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={shared_data}", "dataset.split_seed=1"), torch.device("cpu"))
    assert not torch.equal(other.train, data.train)
    sequential = load_dataset(_dataset_cfg("dataset=frey", f"dataset.root={shared_data}", "dataset.split=sequential"), torch.device("cpu"))
    assert sequential.train.shape == (1600, 560) and np.array_equal(as_uint8(sequential.train), frames[:1600])


def test_split_frames_shuffles_by_seed_or_keeps_the_order():
    frames = np.arange(20)[:, None].repeat(3, 1)
    train, test = split_frames(frames, 15, "sequential", seed=0)
    assert np.array_equal(train, frames[:15]) and np.array_equal(test, frames[15:])
    a_train, a_test = split_frames(frames, 15, "shuffled", seed=0)
    b_train, _ = split_frames(frames, 15, "shuffled", seed=0)
    c_train, _ = split_frames(frames, 15, "shuffled", seed=1)
    assert a_train.shape == (15, 3) and a_test.shape == (5, 3) and np.array_equal(a_train, b_train)
    assert not np.array_equal(a_train, c_train) and not np.array_equal(a_train, train)
    assert sorted(np.concatenate([a_train, a_test])[:, 0]) == list(range(20))
    for n_train in (0, 20):
        with pytest.raises(UserError, match=f"dataset.train_frames={n_train} must lie in 1..19"):
            split_frames(frames, n_train, "sequential", seed=0)
    with pytest.raises(ValueError, match="unknown Frey split"):
        split_frames(frames, 15, "random", seed=0)


def test_the_sampler_draws_with_replacement_or_epoch_by_epoch():
    g = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    uniform = MinibatchSampler(n=10, batch_size=100, with_replacement=True)
    idx = uniform.next(g, cpu)
    assert idx.shape == (100,) and 0 <= idx.min() and idx.max() < 10 and len(idx.unique()) == 10  # repeats: with replacement
    epochs = MinibatchSampler(n=10, batch_size=3, with_replacement=False)
    first = torch.cat([epochs.next(g, cpu) for _ in range(3)])
    assert sorted(first.tolist()) == sorted(set(first.tolist())) and len(first) == 9  # no point twice in an epoch
    assert torch.equal(first, epochs.permutation[:9])  # slices of one permutation, the last partial one dropped
    previous = epochs.permutation
    second = epochs.next(g, cpu)
    assert epochs.position == 3 and not torch.equal(epochs.permutation, previous) and torch.equal(second, epochs.permutation[:3])


@pytest.mark.parametrize("with_replacement", [True, False])
def test_a_restored_sampler_draws_the_same_minibatches(with_replacement):
    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    sampler = MinibatchSampler(n=50, batch_size=7, with_replacement=with_replacement)
    for _ in range(4):
        sampler.next(g, cpu)
    state, rng = sampler.state_dict(), g.get_state()
    ahead = [sampler.next(g, cpu) for _ in range(10)]
    restored = MinibatchSampler(n=50, batch_size=7, with_replacement=with_replacement)
    restored.load_state_dict(state, cpu)
    g.set_state(rng)
    assert all(torch.equal(a, restored.next(g, cpu)) for a in ahead)
    if not with_replacement:
        assert state["position"] == 28 and state["permutation"].shape == (50,)


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
        monkeypatch.setattr(data_files, "MNIST_MIRRORS", ("http://127.0.0.1:1/dead/", f"http://127.0.0.1:{server.server_port}/"))
        monkeypatch.setattr(data_files, "MNIST_IDX_MD5", md5)
        target = tmp_path / "cache"
        pixels = read_pixels("mnist", target, download=True)
        assert sorted(p.name for p in target.iterdir()) == sorted(md5)
        assert pixels["train"].shape == (50000, 784)
        # a mirror serving a different file fails the checksum and says so in one line
        monkeypatch.setattr(data_files, "MNIST_IDX_MD5", {k: "0" * 32 for k in md5})
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
