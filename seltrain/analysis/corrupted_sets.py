"""Readers for the released corrupted test sets (Hendrycks & Dietterich, ICLR 2019).

Two layouts, as the generating scripts wrote them (hendrycks/robustness, ImageNet-C/create_c):

- **npy** (CIFAR-10-C, CIFAR-100-C; make_cifar_c.py lines 449-464): ``<corruption>.npy``, uint8
  [5 * N, H, W, 3], the 5 severities' N images stacked in order (severity 1 first), and
  ``labels.npy`` with the 5 * N labels (the test labels repeated per severity; N labels are
  accepted too).
- **folders** (Tiny-ImageNet-C, ImageNet-C; ``DistortImageFolder``, make_tinyimagenet_c.py lines
  81-123): ``<corruption>/<severity>/<wnid>/<image>.JPEG``. A folder's class index is the
  wnid's index among the *training set's* sorted class keys (Tiny ImageNet's wnids.txt, an
  image folder's train/ subfolders), exactly as seltrain's dataset loader maps them.

Nothing is held in memory whole: .npy files are memory-mapped and read one batch at a time,
JPEGs decoded per batch (in ``num_workers`` processes). A wrong layout is one line naming the
problem and the fix (a DataError, exit 3): no labels.npy, an image count not divisible by 5,
an unknown corruption name, a missing severity, a wnid the model was not trained on.

``max_images`` per (corruption, severity): the first N of an .npy block (the same images as
the first N of the CIFAR test split), or N files spread evenly over a folder's sorted list
(its first N would all be from the first few classes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from seltrain.analysis.corruption_tables import COMMON, EXTRA
from seltrain.errors import DataError

KNOWN = COMMON + EXTRA
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _visible(names: Sequence[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _spread(n_total: int, n_take: int | None) -> np.ndarray:
    """``n_take`` indices spread evenly over range(n_total), in order (all without a cap)."""
    if n_take is None or n_take >= n_total:
        return np.arange(n_total)
    return (np.arange(n_take) * n_total) // n_take


@dataclass
class CorruptedSet:
    """A released corrupted set found at ``root``. ``corruptions`` lists the known names
    present; ``batches(name, severity)`` streams uint8 [B, C, H, W] tensors and int64
    labels."""
    root: str
    layout: str                     # "npy" | "folders"
    corruptions: list[str]
    channels: int
    size: int
    class_index: dict[str, int] | None = None
    num_workers: int = 0

    @property
    def layout_name(self) -> str:
        return {"npy": "CIFAR-10-C/-100-C (<corruption>.npy + labels.npy)",
                "folders": "Tiny-ImageNet-C/ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG)"
                }[self.layout]

    def require(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        """One line naming any requested corruption or severity the set lacks."""
        missing = [c for c in corruptions if c not in self.corruptions]
        if missing:
            have = ",".join(self.corruptions) or "none"
            raise DataError(f"{self.root} has no {', '.join(missing)} (it holds: {have}); "
                            f"pass --corruptions with names it holds")
        if self.layout == "folders":
            for c in corruptions:
                for s in severities:
                    d = os.path.join(self.root, c, str(s))
                    if not os.path.isdir(d):
                        raise DataError(f"{d} is missing: {c} has no severity {s} in "
                                        f"{self.root}; pass --severities with those present")

    # ------------------------------------------------------------------ npy
    def _npy(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(self.root, f"{name}.npy")
        try:
            images = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path} ({e}); the file is damaged: fetch it "
                            f"again") from None
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
            raise DataError(f"{path} holds {images.dtype} {list(images.shape)}; a -C .npy "
                            f"file holds uint8 [5 x N, H, W, 3] images")
        if len(images) % 5:
            raise DataError(f"{path} holds {len(images)} images, not a multiple of 5: a -C "
                            f".npy file stacks 5 severities of the same N images")
        labels = self._labels()
        n = len(images) // 5
        if len(labels) not in (n, 5 * n):
            raise DataError(f"{os.path.join(self.root, 'labels.npy')} has {len(labels)} "
                            f"labels but {path} holds 5 x {n} images; want {5 * n} (or {n})")
        h, w, c = images.shape[1:]
        if (h, w) != (self.size, self.size) or c != self.channels:
            raise DataError(f"{path} holds {h}x{w}x{c} images but the model takes "
                            f"{self.size}x{self.size}x{self.channels}; use the -C set of the "
                            f"dataset the model was trained on")
        return images, labels

    def _labels(self) -> np.ndarray:
        path = os.path.join(self.root, "labels.npy")
        try:
            labels = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path} ({e}); fetch it again") from None
        if labels.ndim != 1:
            raise DataError(f"{path} has shape {list(labels.shape)}; want one label per image")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path} holds {labels.dtype} labels; want whole-number class "
                            "indices (the released labels.npy is uint8)")
        if len(labels) and int(np.min(labels)) < 0:
            raise DataError(f"{path} has label {int(np.min(labels))}; class indices start at "
                            "0: use the released labels.npy")
        return labels

    # ------------------------------------------------------------------ folders
    def _files(self, name: str, severity: int) -> tuple[list[str], np.ndarray]:
        d = os.path.join(self.root, name, str(severity))
        paths, labels = [], []
        for wnid in _visible(os.listdir(d)):
            sub = os.path.join(d, wnid)
            if not os.path.isdir(sub):
                continue
            if wnid not in self.class_index:
                raise DataError(f"{sub}: class {wnid!r} is not one of the model's training "
                                f"classes; use the -C set of the dataset the model was "
                                f"trained on (or --data-root pointing at that dataset)")
            files = _visible(f for f in os.listdir(sub)
                             if f.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(sub, f) for f in files]
            labels += [self.class_index[wnid]] * len(files)
        if not paths:
            raise DataError(f"{d} holds no <wnid>/*.JPEG images; a -C folder set is "
                            f"<corruption>/<severity>/<wnid>/*.JPEG")
        return paths, np.asarray(labels, dtype=np.int64)

    def num_images(self, name: str, severity: int, max_images: int | None = None) -> int:
        if self.layout == "npy":
            n = len(self._npy(name)[0]) // 5
        else:
            n = len(self._files(name, severity)[0])
        return n if max_images is None else min(n, max_images)

    def batches(self, name: str, severity: int, *, batch_size: int = 256,
                max_images: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 [B, C, H, W] images and int64 [B] labels of one corruption and severity."""
        if name not in self.corruptions:
            self.require([name], [severity])
        if self.layout == "npy":
            images, labels = self._npy(name)
            n = len(images) // 5
            take = n if max_images is None else min(n, max_images)
            lab = labels[(severity - 1) * n:severity * n] if len(labels) == 5 * n else labels
            for i in range(0, take, batch_size):
                j = min(i + batch_size, take)
                block = np.array(images[(severity - 1) * n + i:(severity - 1) * n + j])
                # A copy: the labels are a read-only memory map, which torch warns about.
                y = torch.from_numpy(np.array(lab[i:j], dtype=np.int64))
                yield torch.from_numpy(block).permute(0, 3, 1, 2), y
            return
        paths, labels = self._files(name, severity)
        idx = _spread(len(paths), max_images)
        ds = _Decode([paths[i] for i in idx], labels[idx], self.channels, self.size)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size,
                                             num_workers=self.num_workers)
        for x, y, errors in loader:
            bad = [e for e in errors if e]
            if bad:  # raised here, in the main process, as one line
                raise DataError(bad[0])
            yield x, y


class _Decode(torch.utils.data.Dataset):
    """Decode one file to uint8 [C, size, size]. The released JPEGs are already at the
    dataset's size (64 px Tiny, 224 px ImageNet: Resize(256) + CenterCrop(224), as seltrain's
    eval transform); other sizes are resized (shorter side) and centre-cropped."""

    def __init__(self, paths: list[str], labels: np.ndarray, channels: int, size: int):
        self.paths, self.labels, self.channels, self.size = paths, labels, channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        try:
            with Image.open(self.paths[i]) as im:
                img = im.convert("L" if self.channels == 1 else "RGB")
        except OSError as e:
            # reported by the main process: an exception raised in a worker would reach the
            # user wrapped in the worker's traceback
            return (torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8),
                    int(self.labels[i]), f"cannot decode {self.paths[i]} ({e}); the file is "
                                         f"damaged: extract it again")
        x = TF.pil_to_tensor(img)
        if x.shape[-2:] != (self.size, self.size):
            x = TF.center_crop(TF.resize(x, self.size, antialias=True), [self.size, self.size])
        return x, int(self.labels[i]), ""


def open_corrupted_set(root: str, *, channels: int, size: int,
                       class_keys: Sequence[str] | Callable[[], Sequence[str] | None] | None
                       = None, num_classes: int | None = None,
                       num_workers: int = 0) -> CorruptedSet:
    """Find the layout at ``root`` and check it. ``class_keys`` (the training set's sorted
    class folder names / wnids, or a function returning them, called only for the folder
    layout) maps wnids to labels; ``num_classes`` bounds the .npy labels."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"--corrupted-root {root} is not a folder; point it at the extracted "
                        f"CIFAR-10-C / Tiny-ImageNet-C / ImageNet-C folder")
    entries = _visible(os.listdir(root))
    npys = [e[:-4] for e in entries if e.endswith(".npy") and os.path.isfile(
        os.path.join(root, e))]
    dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if npys:
        names = [n for n in npys if n != "labels"]
        unknown = [n for n in names if n not in KNOWN]
        if unknown:
            raise DataError(f"{root}: unknown corruption file {unknown[0]}.npy; CIFAR-10-C "
                            f"names are {', '.join(KNOWN)}")
        if "labels" not in npys:
            raise DataError(f"{root} has {len(names)} corruption .npy files but no labels.npy;"
                            f" CIFAR-10-C/-100-C keep labels.npy beside them: extract it too")
        cset = CorruptedSet(root, "npy", [n for n in KNOWN if n in names], channels, size)
        labels = cset._labels()
        if num_classes is not None and len(labels) and int(np.max(labels)) >= num_classes:
            raise DataError(f"{os.path.join(root, 'labels.npy')} has label "
                            f"{int(np.max(labels))} but the model has {num_classes} classes; "
                            f"use the -C set of the dataset the model was trained on")
        return cset
    if not dirs:
        raise DataError(f"{root} holds neither <corruption>.npy files with labels.npy "
                        f"(CIFAR-10-C) nor <corruption>/<severity>/<wnid>/ folders "
                        f"(Tiny-ImageNet-C, ImageNet-C)")
    unknown = [d for d in dirs if d not in KNOWN]
    if unknown:
        hint = (f"; is the set one level down, in {os.path.join(root, unknown[0])}?"
                if len(unknown) == len(dirs) else f"; -C folder names are {', '.join(KNOWN)}")
        raise DataError(f"{root}: unknown corruption folder {unknown[0]!r}{hint}")
    for d in dirs:
        bad = [s for s in _visible(os.listdir(os.path.join(root, d)))
               if s not in ("1", "2", "3", "4", "5")]
        if bad:
            raise DataError(f"{os.path.join(root, d, bad[0])}: severity folders are 1 to 5")
    if callable(class_keys):
        class_keys = class_keys()
    if class_keys is None:
        raise DataError(f"{root} is a Tiny-ImageNet-C/ImageNet-C folder set, whose classes are "
                        f"wnids: it needs a model trained on tinyimagenet or imagefolder")
    return CorruptedSet(root, "folders", [n for n in KNOWN if n in dirs], channels, size,
                        {k: i for i, k in enumerate(class_keys)}, num_workers)


def training_class_keys(dataset: str, data_root: str | None, info) -> list[str] | None:
    """The sorted class keys the dataset loader indexes labels by: Tiny ImageNet's wnids.txt,
    an image folder's train/ subfolder names; None for datasets without wnids."""
    if dataset == "imagefolder":
        return list(info.class_names)  # the sorted train/ folder names (sources.py)
    if dataset == "tinyimagenet":
        from seltrain.data.sources import _find_tinyimagenet

        base = _find_tinyimagenet(os.path.expanduser(data_root or ""))
        if base is None:
            raise DataError(f"tinyimagenet's wnids.txt not found under {data_root}; pass "
                            f"--data-root pointing at the Tiny ImageNet the model was trained "
                            f"on (its wnids give the class indices)")
        with open(os.path.join(base, "wnids.txt")) as f:
            return sorted({line.strip() for line in f if line.strip()})
    return None
