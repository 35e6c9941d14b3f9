"""Dataset sources read the real on-disk formats (fakes written by tests/fixtures_data.py)."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from seltrain.data import sources
from seltrain.config import SyntheticConfig
from seltrain.data.sources import ArraySplit, DataError, FileSplit, load_split, split_indices
import fixtures_data as fx

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


# --- split_indices -----------------------------------------------------------------------------

def test_split_indices_is_a_sorted_disjoint_deterministic_partition():
    train, val = split_indices(1000, 100, seed=3)
    assert (len(train), len(val)) == (900, 100)
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    again_train, again_val = split_indices(1000, 100, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(1000, 100, seed=4)[1])
    # val is a random sample, not a block: it reaches into both halves.
    assert val.min() < 500 < val.max()


def test_split_indices_edges():
    train, val = split_indices(10, 0, seed=0)
    assert np.array_equal(train, np.arange(10)) and len(val) == 0
    assert len(split_indices(10, 9, seed=0)[0]) == 1
    for bad in (10, 11, -1):
        with pytest.raises(DataError, match="val_size"):
            split_indices(10, bad, seed=0)


# --- synthetic ---------------------------------------------------------------------------------

def test_synthetic_is_deterministic_with_the_spec_shapes():
    spec = SyntheticConfig(num_classes=5, image_size=16, channels=1, train_size=100, test_size=40)
    info, train = load_split("synthetic", None, "train", synthetic=spec)
    _, again = load_split("synthetic", None, "train", synthetic=spec)
    info_test, test = load_split("synthetic", None, "test", synthetic=spec)
    assert train.images.shape == (100, 16, 16, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (40, 16, 16, 1) and train.labels.dtype == np.int64
    assert np.array_equal(train.images, again.images)
    assert np.array_equal(train.labels, again.labels)
    assert np.bincount(train.labels).tolist() == [20] * 5
    assert info == info_test  # stats never depend on which split was asked for
    assert (info.num_classes, info.channels, info.image_size, info.family) == (5, 1, 16, "cifar")
    assert abs(info.mean[0] - train.images.mean() / 255) < 0.02
    other = load_split("synthetic", None, "train", synthetic=SyntheticConfig(seed=1))[1]
    assert not np.array_equal(other.images, load_split("synthetic", None, "train")[1].images)


def test_synthetic_classes_are_learnable_from_train_to_test():
    # Nearest class mean, fit on train and scored on test: works only if the class structure
    # is real and shared by both splits (same prototypes, different samples).
    info, train = load_split("synthetic", None, "train")
    _, test = load_split("synthetic", None, "test")
    x_train = train.images.reshape(len(train), -1).astype(np.float32)
    x_test = test.images.reshape(len(test), -1).astype(np.float32)
    means = np.stack([x_train[train.labels == k].mean(0) for k in range(info.num_classes)])
    pred = ((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == test.labels).mean() > 0.8
    # ... and not by copying: no test image is a train image.
    assert not np.array_equal(train.images[:len(test)], test.images)


# --- Fashion-MNIST (IDX) -----------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_exactly(tmp_path, gz):
    root = fx.write_fashion_mnist(tmp_path, n_train=50, n_test=20, gz=gz)
    expected = fx.fashion_mnist_arrays(50, 20)
    for split in ("train", "test"):
        info, data = load_split("fashion_mnist", root, split)
        assert isinstance(data, ArraySplit)
        assert data.images.shape == (len(expected[split][1]), 28, 28, 1)
        assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
        assert np.array_equal(data.images, expected[split][0])
        assert np.array_equal(data.labels, expected[split][1])
    assert info.num_classes == 10 and info.channels == 1 and info.family == "mnist"
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"


def test_fashion_mnist_finds_torchvision_layout(tmp_path):
    fx.write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10)
    _, data = load_split("fashion_mnist", str(tmp_path), "test")
    assert np.array_equal(data.labels, fx.fashion_mnist_arrays(30, 10)["test"][1])


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason=f"{DEBIAN_FASHION_MNIST} absent: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_debian_package():
    info, train = load_split("fashion_mnist", None, "train")
    _, test = load_split("fashion_mnist", None, "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.mean() / 255 == pytest.approx(info.mean[0], abs=1e-3)
    assert train.images.std() / 255 == pytest.approx(info.std[0], abs=1e-3)


def test_idx_wrong_magic_names_the_file(tmp_path):
    root = fx.write_fashion_mnist(tmp_path, n_train=20, n_test=10, gz=False)
    path = os.path.join(root, "train-labels-idx1-ubyte")
    with open(path, "r+b") as f:
        f.write((2051).to_bytes(4, "big"))  # an images magic in a labels file
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*magic 2051, expected 2049"):
        load_split("fashion_mnist", root, "train")


def test_idx_truncated_names_the_file(tmp_path):
    root = fx.write_fashion_mnist(tmp_path, n_train=20, n_test=10, gz=False)
    path = os.path.join(root, "t10k-images-idx3-ubyte")
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        load_split("fashion_mnist", root, "test")


def test_idx_cut_off_gzip_names_the_file(tmp_path):
    root = fx.write_fashion_mnist(tmp_path, n_train=20, n_test=10, gz=True)
    path = os.path.join(root, "train-images-idx3-ubyte.gz")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_split("fashion_mnist", root, "train")


def test_idx_label_count_must_match(tmp_path):
    root = fx.write_fashion_mnist(tmp_path, n_train=20, n_test=10, gz=False)
    fx.write_idx(os.path.join(root, "t10k-labels-idx1-ubyte"), np.zeros(7, np.uint8), gz=False)
    with pytest.raises(DataError, match="10 images but .* 7 labels"):
        load_split("fashion_mnist", root, "test")


def test_fashion_mnist_missing_names_the_path(tmp_path):
    where = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=f"not found under {where}.*dataset-fashion-mnist"):
        load_split("fashion_mnist", str(tmp_path), "train")


def test_fashion_mnist_download_without_network_says_so(tmp_path, monkeypatch):
    # Port 9 on localhost refuses at once: the same failure as a machine without network.
    monkeypatch.setattr(sources, "FASHION_MNIST_URL", "http://127.0.0.1:9/")
    where = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=f"could not download fashion_mnist into {where}"):
        load_split("fashion_mnist", str(tmp_path), "train", download=True)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".gz")]  # no half files


# --- CIFAR (pickles) ---------------------------------------------------------------------------

def test_cifar10_reads_pickles_exactly(tmp_path):
    root = fx.write_cifar10(tmp_path, n_per_batch=8, n_test=12)
    expected = fx.cifar10_arrays(8, 12)
    for split, n in (("train", 40), ("test", 12)):
        info, data = load_split("cifar10", root, split)
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.images.flags.c_contiguous and data.labels.dtype == np.int64
        assert np.array_equal(data.images, expected[split][0])
        assert np.array_equal(data.labels, expected[split][1])
    assert info.class_names[:3] == ("airplane", "automobile", "bird")
    assert (info.num_classes, info.image_size, info.family) == (10, 32, "cifar")
    assert info.mean == (0.4914, 0.4822, 0.4465)
    # root may also point at the batches folder itself.
    _, same = load_split("cifar10", os.path.join(root, "cifar-10-batches-py"), "test")
    assert np.array_equal(same.images, expected["test"][0])


def test_cifar_rows_are_channel_major():
    # One hand-made row: R plane all 1, G plane all 2, B plane all 3 -> pixel (1, 2, 3).
    images = np.zeros((1, 32, 32, 3), np.uint8) + np.array([1, 2, 3], np.uint8)
    row = fx._cifar_rows(images)[0]
    assert row[:1024].tolist() == [1] * 1024 and row[2048:].tolist() == [3] * 1024


def test_cifar100_reads_fine_labels(tmp_path):
    root = fx.write_cifar100(tmp_path, n_train=150, n_test=30)
    expected = fx.cifar100_arrays(150, 30)
    info, train = load_split("cifar100", root, "train")
    _, test = load_split("cifar100", root, "test")
    assert np.array_equal(train.images, expected["train"][0])
    assert np.array_equal(train.labels, expected["train"][1])
    assert np.array_equal(test.labels, expected["test"][1])
    assert set(train.labels.tolist()) == set(range(100))
    assert info.num_classes == 100 and info.class_names[7] == "fine07"


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=f"cifar10 not found under {re.escape(str(tmp_path))}: "
                                        f"expected cifar-10-batches-py/.*data.download=true"):
        load_split("cifar10", str(tmp_path), "train")
    with pytest.raises(DataError, match="data.root"):
        load_split("cifar100", None, "test")


def test_cifar_corrupt_pickle_names_the_file(tmp_path):
    root = fx.write_cifar10(tmp_path, n_per_batch=4, n_test=4)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    os.truncate(path, 50)
    with pytest.raises(DataError, match="data_batch_3"):
        load_split("cifar10", root, "train")


# --- Tiny ImageNet -----------------------------------------------------------------------------

def _decode(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_tinyimagenet_maps_wnids_in_sorted_order(tmp_path):
    root = fx.write_tinyimagenet(tmp_path, n_classes=3, n_train_per_class=5, n_val_per_class=4)
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = sorted(open(os.path.join(base, "wnids.txt")).read().split())
    info, train = load_split("tinyimagenet", root, "train")
    _, val = load_split("tinyimagenet", root, "test")
    assert isinstance(train, FileSplit) and train.labels.dtype == np.int64
    assert (info.num_classes, info.image_size, info.family) == (3, 64, "imagenet")
    assert info.class_names == ("thing0", "thing1", "thing2")  # first name in words.txt
    assert np.bincount(train.labels).tolist() == [5] * 3 and len(val) == 12
    assert train.paths == sorted(train.paths) and val.paths == sorted(val.paths)
    # Train: the label is the sorted position of the wnid folder.
    for path, label in zip(train.paths, train.labels):
        assert path.split(os.sep)[-3] == wnids[label]
    # Val: the label comes from val_annotations.txt, read independently here ...
    ann = dict(line.split("\t")[:2] for line in open(os.path.join(base, "val",
                                                                  "val_annotations.txt")))
    for path, label in zip(val.paths, val.labels):
        assert wnids[label] == ann[os.path.basename(path)]
    # ... and agrees with the pixels the fixture drew for that class.
    for path, label in zip(train.paths + val.paths, np.concatenate([train.labels, val.labels])):
        image = _decode(path)
        assert image.shape == (64, 64, 3)
        assert fx.nearest_class(image, 3) == label


def test_tinyimagenet_accepts_the_inner_folder_and_rejects_unknown_wnids(tmp_path):
    root = fx.write_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=2, n_val_per_class=1)
    base = os.path.join(root, "tiny-imagenet-200")
    assert len(load_split("tinyimagenet", base, "test")[1]) == 2
    with open(os.path.join(base, "val", "val_annotations.txt"), "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:3: .*n99999999"):
        load_split("tinyimagenet", root, "test")


def test_tinyimagenet_missing(tmp_path):
    where = re.escape(str(tmp_path))
    with pytest.raises(DataError, match=f"tinyimagenet not found under {where}.*wnids.txt"):
        load_split("tinyimagenet", str(tmp_path), "train")


# --- ImageNet-style class folders --------------------------------------------------------------

def test_imagefolder_png_round_trips_exactly(tmp_path):
    root = fx.write_imagefolder(tmp_path, n_classes=3, n_train_per_class=4, n_val_per_class=2,
                                size=20, ext="png")
    expected = fx.imagefolder_arrays(3, 4, 2, size=20)
    for split in ("train", "test"):
        info, data = load_split("imagefolder", root, split)
        assert isinstance(data, FileSplit)
        assert np.array_equal(data.labels, expected[split][1])
        decoded = np.stack([_decode(p) for p in data.paths])
        assert np.array_equal(decoded, expected[split][0])
    assert info.class_names == ("class000", "class001", "class002")
    assert (info.num_classes, info.image_size, info.family) == (3, 224, "imagenet")


@pytest.mark.parametrize("ext", ["jpg", "JPEG"])
def test_imagefolder_jpeg_labels(tmp_path, ext):
    root = fx.write_imagefolder(tmp_path, n_classes=4, n_train_per_class=3, n_val_per_class=2,
                                ext=ext)
    info, train = load_split("imagefolder", root, "train")
    assert len(train) == 12 and info.num_classes == 4
    expected = fx.imagefolder_arrays(4, 3, 2)["train"][0]
    for path, label, want in zip(train.paths, train.labels, expected):
        image = _decode(path)
        assert fx.nearest_class(image, 4) == label
        assert np.abs(image.astype(int) - want).mean() < 12  # JPEG loss only


def test_imagefolder_val_class_must_exist_in_train(tmp_path):
    root = fx.write_imagefolder(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=1)
    os.makedirs(os.path.join(root, "val", "zebra"))
    with pytest.raises(DataError, match="classes not in .*train: zebra"):
        load_split("imagefolder", root, "test")
    assert len(load_split("imagefolder", root, "train")[1]) == 2


def test_imagefolder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/train does not exist")):
        load_split("imagefolder", str(tmp_path), "train")
    os.makedirs(tmp_path / "train" / "cat")
    with pytest.raises(DataError, match="train/cat holds no"):
        load_split("imagefolder", str(tmp_path), "train")


# --- names -------------------------------------------------------------------------------------

def test_unknown_dataset_and_split():
    assert sources.DATASETS == ("synthetic", "fashion_mnist", "cifar10", "cifar100",
                                "tinyimagenet", "imagefolder")
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*cifar10"):
        load_split("mnist", None, "train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_split("synthetic", None, "val")
