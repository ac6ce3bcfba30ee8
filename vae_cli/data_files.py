"""The data files of MNIST and Frey Face: where they are looked for, how they are read and verified,
and where they are downloaded from when absent.

Every split is checked against the content hashes of the data's README (sha256 of the uint8 pixels,
whatever file they came from) before use, and pickles go through an unpickler that admits numpy
arrays only. Sources, in the order they are looked for in `dataset.root`:
- MNIST: `mnist.pkl.gz` (the classic 50,000 / 10,000 / 10,000 split), else the four IDX files
  (train = first 50,000 of the 60,000 training images, valid = the last 10,000, test = t10k);
- Frey Face: `freyfaces.pkl`, else Roweis' `frey_rawface.mat`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from .errors import UserError

MNIST_PICKLE = "mnist.pkl.gz"
MNIST_IDX = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MNIST_IDX_MD5 = {  # ../shared/data/README.md
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FREY_PICKLE = "freyfaces.pkl"
FREY_MAT = "frey_rawface.mat"
FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"

# sha256 of the uint8 pixels in C order, one image a row (../shared/data/README.md).
CONTENT_SHA256 = {
    ("mnist", "train"): "c80ceb24eedca80f31cfca280b8fb911cbb41b9990f998bebd40e26b1ab6d0f8",
    ("mnist", "valid"): "2b079632b0defaf508a5ebf8c4ac1e18ce15c8b337da087e9c3e1c84c618d244",
    ("mnist", "test"): "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    ("frey", "all"): "2438ba4f0d2a6bd8bac43de756141eaa33c8d248dd613d464bdb1210d9b7af78",
}
IMAGE_SHAPES = {"mnist": (28, 28), "frey": (28, 20)}
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes the bytes of an array in a protocol-2 pickle
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Pickles can run code on load: admit numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(module, name)


def safe_unpickle(file) -> object:
    """Unpickle `file` (a binary file object) admitting only numpy arrays, lists, tuples, numbers."""
    return _ArraysOnlyUnpickler(file, encoding="latin1").load()


def sha256_uint8(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def verify(pixels: np.ndarray, dataset: str, split: str, source: Path) -> np.ndarray:
    """Refuse pixels whose content hash differs from the published one."""
    digest = sha256_uint8(pixels)
    if digest != CONTENT_SHA256[(dataset, split)]:
        raise UserError(
            f"{source} does not hold the expected {dataset} {split} pixels (sha256 {digest[:12]}...); "
            "replace the file with an intact copy or point dataset.root= at one"
        )
    return pixels


def _unit_floats_to_uint8(x: np.ndarray, source: Path) -> np.ndarray:
    """Grey levels stored as pixel/256 floats back to the exact uint8 pixels."""
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256.0)  # exact: a power of two
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise UserError(f"{source} holds values that are not 8-bit pixels / 256; replace the file with an intact copy")
    return pixels.astype(np.uint8)


def _read_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rb") as f:
        (train, _), (valid, _), (test, _) = safe_unpickle(f)
    return {name: _unit_floats_to_uint8(x, path) for name, x in (("train", train), ("valid", valid), ("test", test))}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): magic 0x0000 0x08 ndim, big-endian sizes, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0:3] != b"\x00\x00\x08":
        raise UserError(f"{path} is not an IDX file of unsigned bytes; replace it with an intact copy")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} bytes); download it again")
    return data.reshape(shape[0], -1)


def _read_mnist_idx(root: Path) -> dict[str, np.ndarray]:
    train_valid = read_idx(root / MNIST_IDX["train_images"])
    test = read_idx(root / MNIST_IDX["test_images"])
    return {"train": train_valid[:50000], "valid": train_valid[50000:], "test": test}


def _read_frey(path: Path) -> np.ndarray:
    if path.name.endswith(".mat"):
        from scipy.io import loadmat

        try:
            ff = loadmat(path)["ff"]  # (560, 1965), one image a column
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path} is not Roweis' frey_rawface.mat ({e}); replace it with an intact copy") from None
        return np.ascontiguousarray(ff.T, dtype=np.uint8)
    with open(path, "rb") as f:
        frames = np.asarray(safe_unpickle(f))
    if frames.dtype != np.uint8:
        raise UserError(f"{path} does not hold uint8 frames; replace it with an intact copy")
    return frames.reshape(-1, frames.shape[-1])


def default_root() -> Path:
    """$VAE_CLI_DATA if set, else the user cache folder (~/.cache/vae-cli on Linux)."""
    env = os.environ.get("VAE_CLI_DATA")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("vae-cli"))


def _download(root: Path, name: str) -> None:
    """Fetch the canonical files with pooch and their published checksums; a failure is one line with
    the reason's whole first line, the URLs tried and the fix."""
    import pooch

    logger, level = pooch.get_logger(), pooch.get_logger().level
    logger.setLevel("WARNING")  # pooch logs each download on stderr, where only errors go
    print(f"downloading {name} into {root}")
    tried: list[str] = []  # the URLs of the file being fetched
    try:
        if name == "mnist":
            for fname, md5 in MNIST_IDX_MD5.items():
                tried = [mirror + fname for mirror in MNIST_MIRRORS]
                for i, url in enumerate(tried):
                    try:
                        pooch.retrieve(url, known_hash=f"md5:{md5}", fname=fname, path=root, progressbar=False)
                        break
                    except Exception:
                        if i == len(tried) - 1:
                            raise
        else:  # no published file checksum: the content hash is checked on load
            tried = [FREY_URL]
            pooch.retrieve(FREY_URL, known_hash=None, fname=FREY_MAT, path=root, progressbar=False)
    except Exception as e:
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        files = {"mnist": f"{MNIST_PICKLE}, or the four IDX files ({', '.join(MNIST_IDX.values())}),",
                 "frey": f"{FREY_PICKLE} or {FREY_MAT}"}[name]
        raise UserError(
            f"could not download {name} into {root} ({type(e).__name__}{': ' + reason if reason else ''}; tried {' and '.join(tried)}); "
            f"copy {files} into {root} by hand, or set dataset.root= (or the VAE_CLI_DATA variable) to a folder that holds them"
        ) from None
    finally:
        logger.setLevel(level)


def read_pixels(name: str, root: Path, download: bool) -> dict[str, np.ndarray]:
    """Find, read and verify the uint8 pixels of every split of `name` in `root`."""
    candidates = {
        "mnist": [(root / MNIST_PICKLE,), tuple(root / f for f in MNIST_IDX.values())],
        "frey": [(root / FREY_PICKLE,), (root / FREY_MAT,)],
    }[name]
    found = next((files for files in candidates if all(f.is_file() for f in files)), None)
    if found is None and download:
        _download(root, name)
        found = candidates[1]
    if found is None:
        looked = " or ".join("+".join(f.name for f in files) for files in candidates)
        raise UserError(
            f"{name} not found in {root} (looked for {looked}) and dataset.download=false; "
            "set dataset.root= to the folder holding them (or VAE_CLI_DATA), or allow dataset.download=true"
        )
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in found)
    return _read_verified(name, stamp)


@functools.lru_cache(maxsize=2)
def _read_verified(name: str, stamp: tuple) -> dict[str, np.ndarray]:
    """Read once per process and file version: sweeps run in one process reuse the pixels."""
    found = [Path(path) for path, _, _ in stamp]
    try:
        if name == "frey":
            pixels = {"all": verify(_read_frey(found[0]), "frey", "all", found[0])}
        else:
            splits = _read_mnist_pickle(found[0]) if len(found) == 1 else _read_mnist_idx(found[0].parent)
            pixels = {split: verify(x, "mnist", split, found[0]) for split, x in splits.items()}
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise UserError(f"could not read {found[0]} ({type(e).__name__}: {str(e)[:120]}); replace it with an intact copy") from None
    for array in pixels.values():
        array.setflags(write=False)  # shared between runs: never modified in place
    return pixels
