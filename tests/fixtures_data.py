"""Small fake datasets written in the real on-disk formats, for tests.

Each ``write_*`` fills a folder exactly as the official archive extracts (IDX files, CIFAR
pickles, Tiny ImageNet's train/val folders, ImageNet-style class folders) and returns the root
to pass to ``load_split``. Pixels come from ``fake_images``: a class colour plus a ramp plus
noise, so the label can be read back from an image's mean colour even after JPEG. The
``*_arrays`` functions return exactly what the array-format writers write, for pixel checks.
"""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
from PIL import Image


def class_colour(labels, channels: int) -> np.ndarray:
    """A fixed colour per class, spread out so classes differ by >= 23 levels somewhere."""
    labels = np.asarray(labels)[..., None]
    if channels == 1:
        return 30 + (labels * 23) % 207
    return 40 + (labels * np.array([97, 151, 211])) % 176


def nearest_class(image: np.ndarray, num_classes: int) -> int:
    """Read the label back from an [H, W, C] image: the class colour nearest its mean."""
    mean = image.reshape(-1, image.shape[-1]).mean(0)
    colours = class_colour(np.arange(num_classes), image.shape[-1])
    return int(np.argmin(((colours - mean) ** 2).sum(1)))


def fake_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    # Balanced to +-1 so every class appears once n >= num_classes.
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes).astype(np.int64)


def fake_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """uint8 [N, H, W, C]: class colour + horizontal ramp (+-20) + uniform noise (+-15)."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-20, 20, w)[None, None, :, None]
    noise = rng.integers(-15, 16, size=(len(labels), h, w, c))
    x = class_colour(labels, c)[:, None, None, :] + ramp + noise
    return np.clip(x, 0, 255).astype(np.uint8)


def _fake_split(n: int, num_classes: int, shape: tuple[int, int, int], seed: int):
    labels = fake_labels(n, num_classes, seed)
    return fake_images(labels, shape, seed + 1), labels


# --- Fashion-MNIST: IDX ------------------------------------------------------------------------

def fashion_mnist_arrays(n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict:
    """{"train": (images [N,28,28,1], labels), "test": ...} as write_fashion_mnist writes them."""
    return {"train": _fake_split(n_train, 10, (28, 28, 1), seed),
            "test": _fake_split(n_test, 10, (28, 28, 1), seed + 1000)}


def write_idx(path: str, array: np.ndarray, gz: bool) -> str:
    """An IDX file: magic 0x08<ndim> (unsigned bytes), big-endian dims, then the raw bytes."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + np.asarray(array.shape, ">u4").tobytes()
    path = path + ".gz" if gz else path
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())
    return path


def write_fashion_mnist(dir, n_train: int = 200, n_test: int = 100, gz: bool = True,
                        seed: int = 0) -> str:
    root = str(dir)
    os.makedirs(root, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = fashion_mnist_arrays(n_train, n_test, seed)[split]
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"), images[..., 0], gz)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), labels.astype(np.uint8), gz)
    return root


# --- CIFAR: python pickles ---------------------------------------------------------------------

def _cifar_rows(images: np.ndarray) -> np.ndarray:
    # The archive stores each image as one 3072-byte row: all R, then all G, then all B.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles


def cifar10_arrays(n_per_batch: int = 40, n_test: int = 60, seed: int = 0) -> dict:
    """{"train": (images [5*n_per_batch,32,32,3], labels), "test": ...}; train = batches 1..5."""
    batches = [_fake_split(n_per_batch, 10, (32, 32, 3), seed + 10 * b) for b in range(1, 6)]
    return {"train": (np.concatenate([b[0] for b in batches]),
                      np.concatenate([b[1] for b in batches])),
            "test": _fake_split(n_test, 10, (32, 32, 3), seed + 1000),
            "batches": batches}


def write_cifar10(dir, n_per_batch: int = 40, n_test: int = 60, seed: int = 0) -> str:
    root = str(dir)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    arrays = cifar10_arrays(n_per_batch, n_test, seed)
    files = [(f"data_batch_{i}", b) for i, b in enumerate(arrays["batches"], 1)]
    for name, (images, labels) in files + [("test_batch", arrays["test"])]:
        _dump(os.path.join(d, name), {
            b"batch_label": name.encode(), b"labels": labels.tolist(),
            b"data": _cifar_rows(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _dump(os.path.join(d, "batches.meta"),
          {b"label_names": names, b"num_cases_per_batch": n_per_batch, b"num_vis": 3072})
    return root


def cifar100_arrays(n_train: int = 200, n_test: int = 60, seed: int = 0) -> dict:
    return {"train": _fake_split(n_train, 100, (32, 32, 3), seed),
            "test": _fake_split(n_test, 100, (32, 32, 3), seed + 1000)}


def write_cifar100(dir, n_train: int = 200, n_test: int = 60, seed: int = 0) -> str:
    root = str(dir)
    d = os.path.join(root, "cifar-100-python")
    os.makedirs(d, exist_ok=True)
    for name, (images, labels) in cifar100_arrays(n_train, n_test, seed).items():
        _dump(os.path.join(d, name), {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": name.encode(), b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(), b"data": _cifar_rows(images)})
    _dump(os.path.join(d, "meta"),
          {b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
           b"coarse_label_names": [f"coarse{k:02d}".encode() for k in range(20)]})
    return root


# --- Image files: Tiny ImageNet and class folders ----------------------------------------------

def _save(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # quality=95 keeps JPEG error far below the gap between class colours.
    jpeg = path.lower().endswith((".jpg", ".jpeg"))
    Image.fromarray(image).save(path, **({"quality": 95} if jpeg else {}))


def write_tinyimagenet(dir, n_classes: int = 3, n_train_per_class: int = 10,
                       n_val_per_class: int = 4, seed: int = 0) -> str:
    """root/tiny-imagenet-200/ as the official zip extracts. The class colour of every image is
    its wnid's position in *sorted* order; wnids.txt and val_annotations.txt are shuffled so a
    loader that trusts file order gets the labels wrong."""
    rng = np.random.default_rng(seed)
    base = os.path.join(str(dir), "tiny-imagenet-200")
    wnids = sorted(f"n{v:08d}" for v in rng.choice(10**8, n_classes, replace=False))
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.writelines(f"{wnids[k]}\n" for k in rng.permutation(n_classes))
    with open(os.path.join(base, "words.txt"), "w") as f:  # the real one lists all of WordNet
        f.write("n00000001\tentity\n")
        f.writelines(f"{w}\tthing{k}, synonym{k}\n" for k, w in enumerate(wnids))
    for k, w in enumerate(wnids):
        images = fake_images(np.full(n_train_per_class, k), (64, 64, 3), seed + 10 + k)
        for j, image in enumerate(images):
            _save(os.path.join(base, "train", w, "images", f"{w}_{j}.JPEG"), image)
        with open(os.path.join(base, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.writelines(f"{w}_{j}.JPEG\t0\t0\t63\t63\n" for j in range(n_train_per_class))
    val_labels = rng.permutation(np.repeat(np.arange(n_classes), n_val_per_class))
    rows = []
    val_images = fake_images(val_labels, (64, 64, 3), seed + 5)
    for m, (k, image) in enumerate(zip(val_labels, val_images)):
        _save(os.path.join(base, "val", "images", f"val_{m}.JPEG"), image)
        rows.append(f"val_{m}.JPEG\t{wnids[k]}\t0\t0\t63\t63\n")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.writelines(rows[i] for i in rng.permutation(len(rows)))
    return str(dir)


def imagefolder_arrays(n_classes: int = 3, n_train_per_class: int = 10, n_val_per_class: int = 4,
                       size: int = 48, seed: int = 0) -> dict:
    """{"train"|"test": (images, labels)} in the order a sorted loader returns them."""
    out = {}
    for split, n, s in (("train", n_train_per_class, seed), ("test", n_val_per_class, seed + 1)):
        labels = np.repeat(np.arange(n_classes), n)
        out[split] = (fake_images(labels, (size, size, 3), s), labels)
    return out


def write_imagefolder(dir, n_classes: int = 3, n_train_per_class: int = 10,
                      n_val_per_class: int = 4, size: int = 48, seed: int = 0,
                      ext: str = "jpg") -> str:
    """root/{train,val}/class<k>/img_<j>.<ext>; class names sort in class-index order."""
    root = str(dir)
    arrays = imagefolder_arrays(n_classes, n_train_per_class, n_val_per_class, size, seed)
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = arrays[split]
        for j, (image, k) in enumerate(zip(images, labels)):
            _save(os.path.join(root, folder, f"class{k:03d}", f"img_{j:04d}.{ext}"), image)
    return root
