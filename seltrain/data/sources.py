"""Dataset sources: read each supported dataset from its standard on-disk layout.

``load_split(name, root, split)`` returns the dataset's ``DatasetInfo`` and one split, either
whole in memory (``ArraySplit``: synthetic, Fashion-MNIST, CIFAR) or as image paths decoded
later by the loader (``FileSplit``: Tiny ImageNet, ImageNet-style class folders). Nothing here
augments or normalizes; ``DatasetInfo.family`` tells the loader which augmentations apply.

The held-out validation set is carved from train by ``split_indices``, a pure function of
(n, val_size, seed) so the torch loader and the FFCV writer carve the same samples.

Every failure a user can fix (missing folder, corrupt file, no network) is a one-line
``DataError`` that names the path and the fix.
"""
from __future__ import annotations

import functools
import gzip
import os
import sys
import urllib.request
from dataclasses import dataclass, replace

import numpy as np

from seltrain.atomic import atomic_write
from seltrain.config import SyntheticConfig
from seltrain.errors import DataError
from seltrain.pickles import load_data_pickle

DATASETS: tuple[str, ...] = ("synthetic", "fashion_mnist", "cifar10", "cifar100",
                             "tinyimagenet", "imagefolder")
SPLITS = ("train", "test")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int                  # 1 for fashion_mnist, 3 otherwise
    image_size: int                # native/train resolution: 28, 32, 64, 224
    family: str                    # "mnist" | "cifar" | "imagenet" (selects augmentations)
    mean: tuple[float, ...]        # per channel, in [0, 1] units
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass
class ArraySplit:
    """A whole split in memory."""
    images: np.ndarray             # uint8 [N, H, W, C], C=1 for grayscale
    labels: np.ndarray             # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FileSplit:
    """A split as image files, decoded lazily by the loader."""
    paths: list[str]
    labels: np.ndarray             # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


Split = ArraySplit | FileSplit


def load_split(name: str, root: str | None, split: str, *, download: bool = False,
               synthetic: SyntheticConfig | None = None) -> tuple[DatasetInfo, Split]:
    """Load ``split`` ("train" or "test") of dataset ``name`` found under ``root``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test' (validation is carved "
                        f"from train with data.val_size)")
    if name == "synthetic":
        return _load_synthetic(synthetic or SyntheticConfig(), split)
    if name == "fashion_mnist":
        return _load_fashion_mnist(root, split, download)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, _need_root(name, root), split, download)
    if name == "tinyimagenet":
        return _load_tinyimagenet(_need_root(name, root), split, download)
    if name == "imagefolder":
        return _load_imagefolder(_need_root(name, root), split)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``val_size`` samples out of ``n`` train samples: (train_idx, val_idx), both sorted.

    Sorted so that reading either subset walks the source in order (friendly to files and
    to FFCV's writer); the randomness is only in *which* samples go to val.
    """
    if not 0 <= val_size < n:
        raise DataError(f"data.val_size={val_size} must be in [0, {n}) for a train split of "
                        f"{n} samples; lower data.val_size")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _need_root(name: str, root: str | None) -> str:
    if not root:
        raise DataError(f"{name} needs a folder: set data.root to where the dataset lives "
                        f"(or where it should be downloaded with data.download=true)")
    return os.path.expanduser(root)


def _download(name: str, dest: str, fetch, place: str) -> None:
    """Run ``fetch()``; any failure becomes a DataError saying where to put the files."""
    try:
        os.makedirs(dest, exist_ok=True)
        fetch()
    except Exception as e:  # URLError, HTTPError, timeouts, bad archives: all mean the same fix
        raise DataError(f"could not download {name} into {dest} ({type(e).__name__}: {e}); "
                        f"without network, fetch it elsewhere and put {place}") from e


# ---------------------------------------------------------------------------------------------
# Synthetic: class prototypes the model can learn in a few hundred steps.

def _synthetic_split(spec: SyntheticConfig, split: str) -> ArraySplit:
    """Each class k has a fixed smooth pattern plus a bar at its own angle and colour.

    A sample is its class template at a random contrast, circularly shifted by a few pixels,
    plus Gaussian noise. Smooth patterns and oriented bars are what early conv filters pick
    up, so class-selective units have something to latch onto. The templates come from the
    spec seed alone, so train and test (different sub-seeds) share them.
    """
    if spec.num_classes < 2 or spec.channels not in (1, 3) or spec.image_size < 4:
        raise DataError(f"bad data.synthetic {spec}: need num_classes >= 2, channels 1 or 3, "
                        f"image_size >= 4")
    proto_seq, train_seq, test_seq = np.random.SeedSequence(spec.seed).spawn(3)
    K, S, C = spec.num_classes, spec.image_size, spec.channels
    rng = np.random.default_rng(proto_seq)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S

    # Sum of 3 plane waves with integer frequencies <= 2 cycles/image: smooth, and periodic
    # so the circular shift below leaves no seam.
    freq = rng.integers(-2, 3, size=(K, C, 3, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(K, C, 3)).astype(np.float32)
    waves = np.cos(2 * np.pi * (freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy)
                   + phase[..., None, None]).sum(axis=2)                      # [K, C, S, S]
    waves /= np.abs(waves).max(axis=(2, 3), keepdims=True) + 1e-6
    angle = np.pi * np.arange(K, dtype=np.float32) / K
    dist = np.abs((xx - 0.5) * np.sin(angle)[:, None, None]
                  - (yy - 0.5) * np.cos(angle)[:, None, None])                # [K, S, S]
    bar = np.exp(-(dist / 0.08) ** 2)
    colour = rng.uniform(-1, 1, size=(K, C)).astype(np.float32)
    colour /= np.abs(colour).max(axis=1, keepdims=True)
    templates = 0.6 * waves + 0.8 * bar[:, None] * colour[:, :, None, None]
    templates = np.ascontiguousarray(templates.transpose(0, 2, 3, 1))        # [K, S, S, C]

    n = spec.train_size if split == "train" else spec.test_size
    rng = np.random.default_rng(train_seq if split == "train" else test_seq)
    labels = rng.permutation(np.arange(n) % K).astype(np.int64)              # balanced to +-1
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
    shift = max(1, S // 10)
    dy, dx = rng.integers(-shift, shift + 1, size=(2, n))
    rows = (np.arange(S)[None, :] - dy[:, None]) % S                         # [n, S]
    cols = (np.arange(S)[None, :] - dx[:, None]) % S
    x = templates[labels[:, None, None], rows[:, :, None], cols[:, None, :]]  # [n, S, S, C]
    x = 128 + 64 * contrast * x + 24 * rng.standard_normal(x.shape, dtype=np.float32)
    return ArraySplit(np.clip(x, 0, 255).astype(np.uint8), labels)


@functools.lru_cache(maxsize=8)
def _synthetic_info(spec: SyntheticConfig) -> DatasetInfo:
    # Statistics come from (up to) 1024 train-distribution samples, never from the split being
    # loaded, so train and test report the same info; 1024 pins them to ~3 decimals.
    x = _synthetic_split(replace(spec, train_size=min(spec.train_size, 1024)), "train").images
    return DatasetInfo("synthetic", spec.num_classes, spec.channels, spec.image_size, "cifar",
                       tuple(round(float(v) / 255, 4) for v in x.mean((0, 1, 2), np.float64)),
                       tuple(round(float(v) / 255, 4) for v in x.std((0, 1, 2), np.float64)),
                       tuple(f"class_{k}" for k in range(spec.num_classes)))


def _load_synthetic(spec: SyntheticConfig, split: str) -> tuple[DatasetInfo, ArraySplit]:
    return _synthetic_info(spec), _synthetic_split(spec, split)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files (http://yann.lecun.com/exdb/mnist/ describes the format).

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_INFO = DatasetInfo(
    "fashion_mnist", 10, 1, 28, "mnist", (0.2860,), (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
     "Bag", "Ankle boot"))
IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dim


def read_idx(path: str, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): big-endian magic, then big-endian dims."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError; a cut-off gzip is EOFError
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt: "
                        f"delete it and fetch it again") from e
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if got != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind (magic {got}, "
                        f"expected {magic}); replace it with the original file")
    ndim = magic & 0xFF  # the magic's low byte is the number of dimensions
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; fetch the file again")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path} has {len(raw) - header} data bytes but its header promises "
                        f"{int(np.prod(dims))} (shape {dims}); the file is truncated or "
                        f"corrupt: fetch it again")
    # Copy: frombuffer over bytes is read-only, and torch.from_numpy warns on that.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _idx_path(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):  # prefer the uncompressed copy: faster to read
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _find_fashion_mnist(root: str, split: str) -> tuple[str, str] | None:
    # The folder itself, torchvision's layout, or one level named after the dataset.
    for folder in (root, os.path.join(root, "FashionMNIST", "raw"),
                   os.path.join(root, "fashion-mnist")):
        paths = [_idx_path(folder, stem) for stem in FASHION_MNIST_FILES[split]]
        if all(paths):
            return paths[0], paths[1]
    return None


def _load_fashion_mnist(root: str | None, split: str,
                        download: bool) -> tuple[DatasetInfo, ArraySplit]:
    root = os.path.expanduser(root) if root else FASHION_MNIST_DEFAULT_ROOT
    found = _find_fashion_mnist(root, split)
    if found is None and download:
        def fetch():
            for stem in (s for pair in FASHION_MNIST_FILES.values() for s in pair):
                dest = os.path.join(root, stem + ".gz")
                if not os.path.isfile(dest):
                    with urllib.request.urlopen(FASHION_MNIST_URL + stem + ".gz",
                                                timeout=30) as r:
                        data = r.read()
                    with atomic_write(dest, "wb") as f:  # never leave a half file behind
                        f.write(data)
        _download("fashion_mnist", root, fetch, "the four *-ubyte.gz files in that folder")
        found = _find_fashion_mnist(root, split)
    if found is None:
        stems = FASHION_MNIST_FILES[split]
        raise DataError(f"fashion_mnist not found under {root}: expected {stems[0]}[.gz] and "
                        f"{stems[1]}[.gz]; install the Debian package dataset-fashion-mnist, "
                        f"or set data.root to a folder holding them (data.download=true "
                        f"fetches them where there is network)")
    image_path, label_path = found
    images, labels = read_idx(image_path, IDX_IMAGES_MAGIC), read_idx(label_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} holds "
                        f"{len(labels)} labels; the files are from different splits or corrupt")
    if images.shape[1:] != (28, 28) or (len(labels) and labels.max() >= 10):
        raise DataError(f"{image_path} / {label_path} are not Fashion-MNIST (images "
                        f"{images.shape[1:]}, max label {labels.max()}); check data.root")
    return FASHION_MNIST_INFO, ArraySplit(images[..., None], labels.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# CIFAR-10/100: the "python version" pickles from https://www.cs.toronto.edu/~kriz/cifar.html

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
@dataclass(frozen=True)
class _CifarLayout:
    folder: str                    # what the official archive extracts to
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    meta_file: str                 # optional; holds the class names
    names_key: bytes
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int


_CIFAR = {
    "cifar10": _CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            "test_batch", b"labels", "batches.meta", b"label_names",
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), "test", b"fine_labels", "meta",
                             b"fine_label_names", (0.5071, 0.4865, 0.4409),
                             (0.2673, 0.2564, 0.2762), 100),
}


def _read_pickle(path: str) -> dict:
    """One batch (or meta) file: plain data only, so a planted file runs nothing
    (``seltrain.pickles``); the files were written by Python 2, their strings read as bytes."""
    batch = load_data_pickle(path, "CIFAR batch", "extract it again from the original archive")
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict); "
                        "extract it again from the original archive")
    return batch


def _find_cifar(root: str, folder: str, files: tuple[str, ...]) -> str | None:
    # Accept root pointing at the parent of the batches folder or at the folder itself.
    for d in (os.path.join(root, folder), root):
        if all(os.path.isfile(os.path.join(d, f)) for f in files):
            return d
    return None


def _load_cifar(name: str, root: str, split: str,
                download: bool) -> tuple[DatasetInfo, ArraySplit]:
    lay = _CIFAR[name]
    folder, k = lay.folder, lay.num_classes
    files = lay.train_files if split == "train" else (lay.test_file,)
    d = _find_cifar(root, folder, files)
    if d is None and download:
        def fetch():
            from torchvision import datasets  # only to download; it checks md5 and extracts
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            cls(root, train=(split == "train"), download=True)
        _download(name, root, fetch,
                  f"the extracted python archive at {os.path.join(root, folder)}")
        d = _find_cifar(root, folder, files)
    if d is None:
        raise DataError(f"{name} not found under {root}: expected {folder}/{','.join(files)}; "
                        f"pass data.download=true on a machine with internet, or extract the "
                        f"CIFAR python archive there")

    images, labels = [], []
    for f in files:
        path = os.path.join(d, f)
        batch = _read_pickle(path)
        data, lab = batch.get(b"data"), batch.get(lay.label_key)
        if (not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072
                or lab is None or len(lab) != len(data)):
            raise DataError(f"{path} does not look like a {name} batch (want b'data' [N, 3072] "
                            f"and {lay.label_key!r} [N]); extract the original archive again")
        # Rows are CHW, channel-major (1024 R, 1024 G, 1024 B); we keep images as NHWC.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(lab, dtype=np.int64))
    labels = np.concatenate(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"{d} has labels outside [0, {k}); is this really {name}?")

    meta_path = os.path.join(d, lay.meta_file)
    names = CIFAR10_CLASSES if name == "cifar10" else tuple(f"class_{i}" for i in range(k))
    if os.path.isfile(meta_path):  # optional: only class names come from it
        meta = _read_pickle(meta_path)
        names = tuple(n.decode() for n in meta.get(lay.names_key, [])) or names
    info = DatasetInfo(name, k, 3, 32, "cifar", lay.mean, lay.std, names)
    return info, ArraySplit(np.ascontiguousarray(np.concatenate(images)), labels)


# ---------------------------------------------------------------------------------------------
# Image-file datasets: Tiny ImageNet and ImageNet-style class folders.

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: str, skipped: list[str] | None = None) -> list[str]:
    """Every image file below ``folder``, sorted, so the order never depends on the filesystem.

    Links are followed only while they stay inside ``folder`` (its real path), and each
    file or folder is visited once: a link to a parent (a loop) or to another class's folder
    would count images many times over, under the wrong label. What is left out that way is
    appended to ``skipped``."""
    base = os.path.realpath(folder)
    inside = lambda p: p == base or p.startswith(base + os.sep)  # noqa: E731
    seen_dirs, seen_files, out = {base}, set(), []
    for d, subdirs, files in os.walk(folder, followlinks=True):
        keep = []
        for sub in sorted(subdirs):
            real = os.path.realpath(os.path.join(d, sub))
            if inside(real) and real not in seen_dirs:
                seen_dirs.add(real)
                keep.append(sub)
            elif skipped is not None:
                skipped.append(os.path.join(d, sub))
        subdirs[:] = keep
        for f in sorted(files):
            if not _is_image(f):
                continue
            path = os.path.join(d, f)
            real = os.path.realpath(path)
            if inside(real) and real not in seen_files:
                seen_files.add(real)
                out.append(path)
            elif skipped is not None:
                skipped.append(path)
    return out


def _find_tinyimagenet(root: str) -> str | None:
    for d in (os.path.join(root, "tiny-imagenet-200"), root):
        if os.path.isfile(os.path.join(d, "wnids.txt")):
            return d
    return None


def _load_tinyimagenet(root: str, split: str, download: bool) -> tuple[DatasetInfo, FileSplit]:
    base = _find_tinyimagenet(root)
    if base is None and download:
        def fetch():
            from torchvision.datasets.utils import download_and_extract_archive
            download_and_extract_archive(TINYIMAGENET_URL, root)
        _download("tinyimagenet", root, fetch, f"the extracted tiny-imagenet-200/ folder in {root}")
        base = _find_tinyimagenet(root)
    if base is None:
        raise DataError(f"tinyimagenet not found under {root}: expected tiny-imagenet-200/"
                        f"wnids.txt with train/ and val/ beside it; unzip tiny-imagenet-200.zip "
                        f"there (data.download=true does it where there is network)")

    with open(os.path.join(base, "wnids.txt")) as f:
        wnids = sorted({line.strip() for line in f if line.strip()})
    if len(wnids) < 2:
        raise DataError(f"tinyimagenet: {os.path.join(base, 'wnids.txt')} lists {len(wnids)} "
                        "class(es); class selectivity and accuracy need at least 2")
    index = {w: i for i, w in enumerate(wnids)}
    names = dict.fromkeys(wnids, "")
    words = os.path.join(base, "words.txt")
    if os.path.isfile(words):  # optional: wnid -> "name, synonym, ..."; keep the first name
        with open(words) as f:
            for line in f:
                w, _, text = line.rstrip("\n").partition("\t")
                if w in names:
                    names[w] = text.split(",")[0].strip()

    paths, labels = [], []
    if split == "train":
        for w in wnids:
            folder = os.path.join(base, "train", w, "images")
            if not os.path.isdir(folder):
                raise DataError(f"tinyimagenet: missing {folder} for a class in wnids.txt; "
                                f"extract the archive again")
            files = sorted(f for f in os.listdir(folder) if _is_image(f))
            paths += [os.path.join(folder, f) for f in files]
            labels += [index[w]] * len(files)
    else:  # the official val set; the official test set has no labels
        ann = os.path.join(base, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise DataError(f"tinyimagenet: missing {ann}; extract the archive again")
        rows = []
        with open(ann) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise DataError(f"{ann}:{n}: want 'file<TAB>wnid<TAB>box...' with a wnid "
                                    f"from wnids.txt, got {line.strip()!r}")
                rows.append((fields[0], index[fields[1]]))
        for fname, label in sorted(rows):
            path = os.path.join(base, "val", "images", fname)
            if not os.path.isfile(path):
                raise DataError(f"tinyimagenet: {ann} lists {path}, which is missing; "
                                f"extract the archive again")
            paths.append(path)
            labels.append(label)
    info = DatasetInfo("tinyimagenet", len(wnids), 3, 64, "imagenet", IMAGENET_MEAN,
                       IMAGENET_STD, tuple(names[w] or w for w in wnids))
    return info, FileSplit(paths, np.asarray(labels, dtype=np.int64))


def open_image(path: str, mode: str):
    """The image file at ``path`` as a PIL image in ``mode`` (e.g. "RGB"), or one DataError
    naming the file and the fix: any decoder failure (not an image, truncated) means the
    same thing to the user. The torch loaders and the .beton writer read images through it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as e:  # noqa: BLE001 - every decoder failure means the same fix
        raise DataError(f"cannot decode {path} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); replace or remove it, "
                        "and list every unreadable image with `seltrain data check --config "
                        "RECIPE`") from None


def find_unreadable(paths: list[str], progress: bool = True) -> list[tuple[str, str]]:
    """[(path, why)] for every image file that PIL cannot fully decode (not an image,
    truncated, unsupported): ``seltrain data check`` runs it over a recipe's splits."""
    from PIL import Image
    from tqdm import tqdm

    bad = []
    for path in tqdm(paths, desc="decoding", unit="img", disable=None if progress else True,
                     dynamic_ncols=True):
        try:
            with Image.open(path) as im:
                im.load()  # the whole image: a truncated file fails only here
        except Exception as e:  # noqa: BLE001 - every decoder failure means the same fix
            bad.append((path, f"{type(e).__name__}: {e}"))
    return bad


def _load_imagefolder(root: str, split: str) -> tuple[DatasetInfo, FileSplit]:
    """ImageNet-style ``root/{train,val}/<class>/<image>``; the "test" split is val/."""
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataError(f"imagefolder: {train_dir} does not exist; lay the data out as "
                        f"ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg and set data.root")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {train_dir} has no class folders; expected "
                        f"{train_dir}/<class>/*.jpg")
    folder = train_dir if split == "train" else os.path.join(root, "val")
    if not os.path.isdir(folder):
        raise DataError(f"imagefolder: {folder} does not exist; the test split reads "
                        f"ROOT/val/<class>/*.jpg")
    present = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DataError(f"imagefolder: {folder} has classes not in {train_dir}: "
                        f"{', '.join(unknown[:5])}; every val class needs a train folder")

    paths, labels, skipped = [], [], []
    for k, c in enumerate(classes):
        files = _images_under(os.path.join(folder, c), skipped) if c in present else []
        if split == "train" and not files:
            # An empty class still counts as an output yet never gets a training signal.
            raise DataError(f"imagefolder: {os.path.join(folder, c)} holds no "
                            f"{'/'.join(IMAGE_EXTENSIONS)} images; add images or remove it")
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise DataError(f"imagefolder: {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    if len(classes) < 2:
        # One class: every prediction is right and every unit's SI is 0 by definition, so
        # accuracy and selectivity would both be meaningless.
        raise DataError(f"imagefolder: {train_dir} has one class folder ({classes[0]}); class "
                        f"selectivity and accuracy need at least 2 classes")
    if skipped:
        print(f"seltrain: imagefolder: left out {len(skipped)} link(s) in {folder} that leave "
              f"their class folder or repeat a file or folder already read (e.g. "
              f"{skipped[0]})", file=sys.stderr, flush=True)
    info = DatasetInfo("imagefolder", len(classes), 3, 224, "imagenet", IMAGENET_MEAN,
                       IMAGENET_STD, tuple(classes))
    return info, FileSplit(paths, np.asarray(labels, dtype=np.int64))


def load_class_folders(folder: str) -> tuple[DatasetInfo, FileSplit]:
    """One evaluation split laid out as ``folder/<class>/<image>`` with no train/ beside it
    (ImageNet's val/ folder, or a few photographs): its classes are the sorted subfolders, as
    ``imagefolder`` reads a split. The analyses of a network seltrain did not train read it
    (``seltrain analyze --data imagefolder:DIR``)."""
    if not os.path.isdir(folder):
        raise DataError(f"imagefolder: {folder} does not exist; give a folder of class "
                        "folders (DIR/<class>/*.jpg) or DIR/train and DIR/val")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class folders; expected "
                        f"{folder}/<class>/*.jpg")
    paths, labels, skipped = [], [], []
    for k, c in enumerate(classes):
        files = _images_under(os.path.join(folder, c), skipped)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise DataError(f"imagefolder: {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    if len(classes) < 2:
        raise DataError(f"imagefolder: {folder} has one class folder ({classes[0]}); class "
                        f"selectivity and accuracy need at least 2 classes")
    if skipped:
        print(f"seltrain: imagefolder: left out {len(skipped)} link(s) in {folder} that leave "
              f"their class folder or repeat a file or folder already read (e.g. "
              f"{skipped[0]})", file=sys.stderr, flush=True)
    info = DatasetInfo("imagefolder", len(classes), 3, 224, "imagenet", IMAGENET_MEAN,
                       IMAGENET_STD, tuple(classes))
    return info, FileSplit(paths, np.asarray(labels, dtype=np.int64))
