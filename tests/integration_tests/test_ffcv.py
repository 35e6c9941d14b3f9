"""FFCV end to end: real .beton files written by seltrain's writer, read by real FFCV loaders.

Budget: about 2-3 minutes on 2 cores. FFCV JIT-compiles each Loader's pipeline (numba) the first
time it runs, and the augmenting train pipeline is the slow one to compile, so only the
end-to-end training run compiles it; every other test reads eval-style pipelines, and the
written files are module-scoped fixtures.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv", reason="FFCV not installed (pip install 'seltrain[ffcv]')")

from helpers import REPO, run_cli, subprocess_env  # noqa: E402
from fixtures_data import (cifar10_arrays, fashion_mnist_arrays, nearest_class,  # noqa: E402
                           write_cifar10, write_cifar100, write_fashion_mnist, write_imagefolder,
                           write_tinyimagenet)
from seltrain.config import load_config  # noqa: E402
from seltrain.data import (RankSharding, build_data, build_eval_loader,  # noqa: E402
                           load_split)
from seltrain.data.ffcv_pipeline import FFCVLoader, sidecar_path  # noqa: E402
from seltrain.data.writer import WriteOptions, write_beton  # noqa: E402
from seltrain.errors import DataError  # noqa: E402

# numba 0.6x raises a harmless KeyError from a dispatcher finalizer when FFCV's compiled
# pipelines are garbage-collected; pytest would report it against whichever test is running.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SPLITS = ("train", "val", "test")
# JPEG tolerance at quality 90 on the fixtures' noisy images (+-15 noise per pixel): mean
# absolute error per pixel and channel under 6 levels of 255, and every image's label still
# readable from its mean colour (class colours are >= 23 levels apart).
JPEG_MEAN_ABS_TOL = 6.0


def write_all(tmp, overrides, splits=SPLITS, **opts) -> dict:
    cfg = load_config(None, overrides)
    out = {}
    for s in splits:
        out[s] = os.path.join(str(tmp), f"{s}.beton")
        write_beton(cfg, s, out[s], WriteOptions(num_workers=2, progress=False, **opts))
    return out


def file_order_loader(path: str, n: int, batch_size: int = 128, decoder=None, channels: int = 3,
                      borrow: bool = False) -> FFCVLoader:
    """The first ``n`` samples of a .beton in file order, decoded by ``decoder`` (default: as
    stored), as uint8 NCHW batches."""
    from ffcv.fields.decoders import SimpleRGBImageDecoder
    from ffcv.transforms import ToTensor, ToTorchImage

    return FFCVLoader(path, np.arange(n), batch_size, train=False,
                      pipeline=[decoder or SimpleRGBImageDecoder(), ToTensor(), ToTorchImage()],
                      sharding=RankSharding(), seed=0, order="random", os_cache=True,
                      drop_last=False, num_workers=2, channels=channels, borrow=borrow)


def read_raw(path: str, n: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a constant-size .beton in file order, undecorated (decode only)."""
    xs, ys = zip(*file_order_loader(path, n, channels=channels))
    return torch.cat(xs), torch.cat(ys)


def ffcv_recipe(overrides, files, *extra):
    return load_config(None, [*overrides, "data.loader=ffcv",
                              *(f"data.ffcv.{s}={p}" for s, p in files.items()), *extra])


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


# --------------------------------------------------------------------------- fixtures

SYN = ["data.dataset=synthetic", "data.val_size=100", "data.synthetic.train_size=400",
       "data.synthetic.test_size=257", "data.synthetic.image_size=16",
       "train.batch_size=32", "train.eval_batch_size=32"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("syn"), SYN)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = write_cifar10(tmp_path_factory.mktemp("cifar_src"), n_per_batch=60, n_test=100)
    ov = ["data.dataset=cifar10", f"data.root={root}", "data.val_size=50",
          "train.eval_batch_size=32"]
    return ov, write_all(tmp_path_factory.mktemp("cifar"), ov)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    root = write_fashion_mnist(tmp_path_factory.mktemp("fm_src"), n_train=300, n_test=120)
    ov = ["data.dataset=fashion_mnist", f"data.root={root}", "data.val_size=60",
          "train.eval_batch_size=32"]
    return ov, write_all(tmp_path_factory.mktemp("fm"), ov)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = write_tinyimagenet(tmp_path_factory.mktemp("tiny_src"), n_classes=5,
                              n_train_per_class=40, n_val_per_class=20)
    ov = ["data.dataset=tinyimagenet", f"data.root={root}", "data.val_size=40",
          "train.eval_batch_size=32"]
    return ov, write_all(tmp_path_factory.mktemp("tiny"), ov)


# --------------------------------------------------------------------------- round trips

@pytest.mark.slow
def test_round_trip_cifar_pickle_raw_exact(cifar):
    _, files = cifar
    x, y = read_raw(files["test"], 100)
    images, labels = cifar10_arrays(n_per_batch=60, n_test=100)["test"]
    assert torch.equal(y, torch.from_numpy(labels))
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))


@pytest.mark.slow
def test_round_trip_fashion_mnist_idx_raw_exact(fashion):
    _, files = fashion
    x, y = read_raw(files["test"], 120, channels=1)
    images, labels = fashion_mnist_arrays(n_train=300, n_test=120)["test"]
    assert x.shape == (120, 1, 28, 28)
    assert torch.equal(y, torch.from_numpy(labels))
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_round_trip_cifar100_train_carve_raw_exact(tmp_path):
    root = write_cifar100(tmp_path / "src", n_train=300, n_test=20)
    ov = ["data.dataset=cifar100", f"data.root={root}", "data.val_size=0.2"]
    files = write_all(tmp_path, ov, splits=("train", "val"))
    cfg = load_config(None, ov)
    _, src = load_split("cifar100", root, "train")
    from seltrain.data import train_val_indices

    train_idx, val_idx = train_val_indices(cfg, 300)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        x, y = read_raw(files[split], len(idx))
        assert torch.equal(y, torch.from_numpy(src.labels[idx]))
        assert torch.equal(x, torch.from_numpy(src.images[idx]).permute(0, 3, 1, 2))
    assert len(train_idx) + len(val_idx) == 300 and not set(train_idx) & set(val_idx)


def _decode_sources(paths) -> torch.Tensor:
    from PIL import Image

    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB")))
                        for p in paths]).permute(0, 3, 1, 2)


def test_round_trip_tinyimagenet_raw_exact(tiny):
    ov, files = tiny
    _, src = load_split("tinyimagenet", load_config(None, ov).data.root, "test")
    x, y = read_raw(files["test"], 100)
    assert torch.equal(y, torch.from_numpy(src.labels))
    assert torch.equal(x, _decode_sources(src.paths))


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_round_trip_imagefolder(tmp_path, mode):
    root = write_imagefolder(tmp_path / "src", n_classes=4, n_train_per_class=50,
                             n_val_per_class=5, size=48)
    ov = ["data.dataset=imagefolder", f"data.root={root}", "data.val_size=0"]
    files = write_all(tmp_path, ov, splits=("train",), write_mode=mode, jpeg_quality=90)
    _, src = load_split("imagefolder", root, "train")
    x, y = read_raw(files["train"], 200)
    ref = _decode_sources(src.paths)
    assert torch.equal(y, torch.from_numpy(src.labels))
    if mode == "raw":
        assert torch.equal(x, ref)
    else:
        err = (x.float() - ref.float()).abs().mean().item()
        assert 0 < err < JPEG_MEAN_ABS_TOL, err
        read_back = [nearest_class(im.permute(1, 2, 0).numpy(), 4) for im in x]
        assert read_back == src.labels.tolist()


# --------------------------------------------------------------------------- FFCV == torch

@pytest.mark.parametrize("name", ["syn", "cifar", "fashion", "tiny"])
def test_eval_pipeline_matches_torch_loader(name, request):
    got = request.getfixturevalue(name)
    ov, files = (SYN, got) if name == "syn" else got
    fb = build_data(ffcv_recipe(ov, files))
    tb = build_data(load_config(None, ov))
    assert fb.info.num_classes == tb.info.num_classes and fb.image_size == tb.image_size
    assert fb.info.channels == tb.info.channels
    for split in ("val", "test"):
        f, t = batches(getattr(fb, split)), batches(getattr(tb, split))
        assert len(f) == len(t) == len(getattr(fb, split)) and len(f) >= 2
        for (fx, fy), (tx, ty) in zip(f, t):
            assert fx.dtype == torch.uint8 and fy.dtype == torch.int64
            assert torch.equal(fx, tx) and torch.equal(fy, ty)


# --------------------------------------------------------------------------- train decoder

@pytest.mark.slow
def test_random_resized_crop_flip_decoder(tiny):
    """seltrain's fused crop+flip decoder: with the crop pinned to the whole image (scale 1)
    and the output at the stored size, every image comes back exactly, mirrored or not, and
    about half are mirrored."""
    from seltrain.data.ffcv_extensions import RandomResizedCropFlipDecoder

    _, files = tiny
    ref, labels = read_raw(files["test"], 100)
    loader = file_order_loader(files["test"], 100, 32,
                               decoder=RandomResizedCropFlipDecoder((64, 64), (1.0, 1.0)))
    x, y = map(torch.cat, zip(*loader))
    assert torch.equal(y, labels)
    same = (x == ref).flatten(1).all(1)
    mirrored = (x == ref.flip(-1)).flatten(1).all(1)
    assert not (same & mirrored).any()  # the fixture images are not symmetric (a ramp)
    assert (same | mirrored).all()
    assert 30 <= int(mirrored.sum()) <= 70  # Binomial(100, 0.5): +-4 sd


def test_borrowed_batches_are_ffcvs_buffers(tiny):
    """borrow=True (the trainer's mode) hands out FFCV's own buffers: the same pixels when used
    at once, but kept batches alias each other. The default copies, so kept batches are safe."""
    _, files = tiny
    ref, _ = read_raw(files["test"], 100)

    def loader(borrow):
        return file_order_loader(files["test"], 100, 16, borrow=borrow)

    used_at_once = torch.cat([x.clone() for x, _ in loader(True)])
    assert torch.equal(used_at_once, ref)
    kept = list(loader(True))
    assert len(kept) == 7 and len({x.data_ptr() for x, _ in kept}) < 7  # buffers reused
    assert not torch.equal(torch.cat([x for x, _ in kept]), ref)
    kept = list(loader(False))
    assert torch.equal(torch.cat([x for x, _ in kept]), ref)


@pytest.mark.slow
def test_trainer_eval_path_batches_survive_later_draws(syn, tmp_path):
    """The trainer borrows FFCV's buffers for every split, which FFCV rewrites as soon as the
    next batch is drawn (and on a GPU they are pinned, so copies are asynchronous). Batches
    drawn through the trainer's evaluation path (DevicePreprocess.batches) are the caller's:
    kept until every later batch of the split has been drawn, they still equal the stored
    images; and Trainer.evaluate on the borrowing loader gives bitwise the numbers of a
    copying one. (On a GPU, benchmarks/gpu_check.py repeats the comparison.)"""
    from seltrain.trainer import Trainer

    cfg = ffcv_recipe(SYN, syn, f"run.out_dir={tmp_path}", "run.progress=false",
                      "run.tensorboard=false")
    trainer = Trainer(cfg)
    lent = trainer.data.test
    assert lent.reuses_buffers  # the trainer borrows
    # FFCV really reuses the buffers: 9 batches of 32 share fewer than 9 buffers.
    assert len(lent) == 9 and len({x.data_ptr() for x, _ in lent}) < 9

    kept = list(trainer.preprocess.batches(lent))  # every batch drawn before any is checked
    # The stored images, as the torch path holds them in memory (FFCV == torch: above).
    stored, labels = map(torch.cat, zip(*build_data(load_config(None, SYN)).test))
    want_x, want_y = trainer.preprocess(stored, labels)
    assert torch.equal(torch.cat([x for x, _ in kept]), want_x)
    assert torch.equal(torch.cat([y for _, y in kept]), want_y)

    a = trainer.evaluate(lent)
    lent.borrow = False  # the same FFCV loader, copying every batch out of its buffers
    assert not lent.reuses_buffers
    b = trainer.evaluate(lent)
    assert a["n"] == b["n"] == 257 and a["acc"] == b["acc"] and a["si"] == b["si"] > 0
    for layer, units in b["si_units"].items():
        assert np.array_equal(a["si_units"][layer], units), layer


# --------------------------------------------------------------------------- sharding

def test_two_rank_eval_covers_every_sample_once(syn):
    cfg = ffcv_recipe(SYN, syn)
    whole = build_data(cfg).test
    ranks = [build_data(cfg, RankSharding(r, 2)).test for r in range(2)]
    x1, y1 = map(torch.cat, zip(*batches(whole)))
    per_rank = [list(map(torch.cat, zip(*batches(r)))) for r in ranks]
    assert [len(y) for _, y in per_rank] == [129, 128]  # 257 samples: no padding, no repeats
    assert torch.equal(torch.cat([x for x, _ in per_rank]), x1)
    assert torch.equal(torch.cat([y for _, y in per_rank]), y1)
    # Every sample once: the images are distinct, so their set has 257 members.
    assert len({bytes(im.numpy()) for im in x1}) == 257
    for r in ranks:
        r.set_epoch(3)
    again = [torch.cat([y for _, y in batches(r)]) for r in ranks]
    assert torch.equal(torch.cat(again), y1)


def test_eval_loaders_come_from_the_recipes_files(syn):
    """build_eval_loader on an FFCV recipe: its data.ffcv.val/test files, the loaders
    build_data hands the trainer, holding the torch path's val carve and test split."""
    cfg = ffcv_recipe(SYN, syn)
    bundle = build_data(cfg)
    torch_cfg = load_config(None, SYN)
    for split, n in (("val", 100), ("test", 257)):
        alone = build_eval_loader(cfg, split)
        assert isinstance(alone, FFCVLoader) and alone.num_samples == n
        x, y = map(torch.cat, zip(*batches(alone)))
        xb, yb = map(torch.cat, zip(*batches(getattr(bundle, split))))
        xt, yt = map(torch.cat, zip(*batches(build_eval_loader(torch_cfg, split))))
        assert torch.equal(x, xb) and torch.equal(y, yb) and torch.equal(y, yt)
        assert torch.equal(x.contiguous(), xt)
    no_val = ffcv_recipe(SYN, {s: p for s, p in syn.items() if s != "val"})
    assert build_eval_loader(no_val, "val") is None


def test_two_rank_training_splits_the_global_batch(syn):
    """Rank r gets the r-th half of each global batch, the same samples the torch path uses."""
    cfg = ffcv_recipe(SYN, syn, "data.augment=false")
    torch_cfg = load_config(None, [*SYN, "data.augment=false"])
    whole = build_data(cfg, batch_size=32).train
    ranks = [build_data(cfg, RankSharding(r, 2), batch_size=16).train for r in range(2)]
    torch_whole = build_data(torch_cfg, batch_size=32).train
    orders = []
    for epoch in (0, 1):
        for loader in (whole, torch_whole, *ranks):
            loader.set_epoch(epoch)
        g, t = batches(whole), batches(torch_whole)
        r0, r1 = batches(ranks[0]), batches(ranks[1])
        assert len(g) == len(r0) == len(r1) == len(t) == 300 // 32
        for (gx, gy), (tx, ty), (ax, ay), (bx, by) in zip(g, t, r0, r1):
            assert torch.equal(torch.cat([ax, bx]), gx) and torch.equal(torch.cat([ay, by]), gy)
            assert torch.equal(gx, tx) and torch.equal(gy, ty)
        orders.append(torch.cat([y for _, y in g]))
    assert not torch.equal(*orders)  # set_epoch reshuffles


# --------------------------------------------------------------------------- errors

def test_bad_files_are_one_line_errors_naming_the_file(syn, tmp_path):
    missing = str(tmp_path / "nope.beton")
    with pytest.raises(DataError, match="nope.beton does not exist") as e:
        build_data(ffcv_recipe(SYN, {**syn, "val": missing}))
    assert "\n" not in str(e.value)

    cut = str(tmp_path / "cut.beton")
    with open(syn["test"], "rb") as f:
        data = f.read()
    for n_bytes in (10, len(data) // 2, len(data) - 7):
        with open(cut, "wb") as f:
            f.write(data[:n_bytes])
        with open(sidecar_path(syn["test"])) as f, open(sidecar_path(cut), "w") as g:
            g.write(f.read())
        with pytest.raises(DataError, match="cut.beton .*(truncated|shorter)") as e:
            build_data(ffcv_recipe(SYN, {**syn, "test": cut}))
        assert "\n" not in str(e.value)

    os.remove(sidecar_path(cut))
    with open(cut, "wb") as f:
        f.write(data)
    with pytest.raises(DataError, match="cut.beton has no sidecar"):
        build_data(ffcv_recipe(SYN, {**syn, "test": cut}))

    with pytest.raises(DataError, match=r"train.beton has 10 classes but the recipe's dataset "
                                        r"\(synthetic\) has 7"):
        build_data(ffcv_recipe(SYN, syn, "data.synthetic.num_classes=7"))
    with pytest.raises(DataError, match="train.beton was carved with val_size=100"):
        build_data(ffcv_recipe(SYN, syn, "data.val_size=50"))
    with pytest.raises(DataError, match="holds the val split but is set as data.ffcv.test"):
        build_data(ffcv_recipe(SYN, {**syn, "test": syn["val"]}))


@pytest.mark.slow
def test_cli_class_mismatch_exits_with_one_line(syn):
    r = run_cli("train", "configs/synthetic.yaml", *SYN, "data.loader=ffcv",
                *(f"data.ffcv.{s}={p}" for s, p in syn.items()), "data.synthetic.num_classes=7",
                "run.out_dir=/tmp/unused")
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.beton has 10 classes" in lines[0], r.stderr


def test_missing_ffcv_says_how_to_install(syn):
    code = ("import sys; sys.modules['ffcv'] = None; from seltrain.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "train", "configs/synthetic.yaml", *SYN,
                        "data.loader=ffcv", f"data.ffcv.train={syn['train']}",
                        f"data.ffcv.test={syn['test']}"],
                       cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'seltrain[ffcv]'" in lines[0], r.stderr


def test_interrupted_write_leaves_no_complete_looking_file(tmp_path):
    """A failing worker (an undecodable image) stops the write: no .beton, no sidecar."""
    root = write_imagefolder(tmp_path / "src", n_classes=2, n_train_per_class=5)
    bad = os.path.join(root, "train", "class001", "img_0007.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    out = str(tmp_path / "t.beton")
    with pytest.raises(DataError, match="img_0007.jpg"):
        write_all(tmp_path, ["data.dataset=imagefolder", f"data.root={root}", "data.val_size=0"],
                  splits=("train",))
    assert os.listdir(tmp_path) == ["src"] and not os.path.exists(out)


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_cli_write_then_train_from_beton_files(syn, tmp_path):
    """`seltrain data write` + `seltrain train data.loader=ffcv`: the whole path, 2 epochs."""
    out = str(tmp_path / "cli_train.beton")
    w = run_cli("data", "write", "--config", "configs/synthetic.yaml", "--split", "train",
                "--out", out, "--num-workers", "2", "--no-progress", *SYN)
    assert w.returncode == 0, w.stderr
    assert "wrote 300 synthetic train images (10 classes, raw)" in w.stdout
    assert os.path.isfile(sidecar_path(out))
    r = run_cli("train", "configs/synthetic.yaml", *SYN, "data.loader=ffcv",
                f"data.ffcv.train={out}", f"data.ffcv.val={syn['val']}",
                f"data.ffcv.test={syn['test']}", "data.ffcv.order=quasi_random",
                "data.ffcv.os_cache=false", "train.epochs=2", "train.max_steps_per_epoch=3",
                "run.progress=false",
                f"run.out_dir={tmp_path}", "run.name=ffcv", "run.tensorboard=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 2/2" in r.stdout and "done: best epoch" in r.stdout, r.stdout
    import json

    with open(tmp_path / "ffcv" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2 and all(np.isfinite(rec["train_loss"]) for rec in records)
