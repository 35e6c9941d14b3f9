"""Average- and worst-case robustness (Leavitt & Morcos 2020; docs/METHODS.md section 5).

Accuracy under the common corruptions (``seltrain.analysis.corruptions``), made on the fly
(``accuracy_under_corruptions``) or read from the released -C files
(``accuracy_on_released``, ``corrupted_sets``), and under gradient attacks
(``accuracy_under_attack``); streams of corrupted and adversarial batches for other analyses
(``corrupted_batches``, ``adversarial_batches``: dimensionality); and ``seltrain analyze
robustness`` (``compute``, ``RobustnessOptions``).

Attacks
-------
``fgsm`` and ``pgd_linf`` (Madry et al. 2018: random start in the eps-ball, signed-gradient
steps, projection) on the cross-entropy. Without ``mean``/``std`` they work in the model's
input space; with them, in pixel space: eps is in pixel units (e.g. 8/255) and images are
clamped to [0, 1]. Either way they take and return normalised inputs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.corruption_tables import (COMMON, EXTRA, TABLES, CorruptionTable,
                                                get_table, table_for)
from seltrain.analysis.corruptions import (CORRUPTIONS, SEVERITIES, corrupt, frost_source,
                                           length_scale, release_format_name, released_format)
from seltrain.analysis.options import (AnalysisOptions, max_images_option, number, numbers,
                                       option, whole_number, words)
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.errors import ConfigError
from seltrain.probes import eval_mode, iterate_batches, model_device, num_batches


# ---------------------------------------------------------------------------------------------
# Normalisation and streams of perturbed batches
# ---------------------------------------------------------------------------------------------


def _stats(mean, std, x: Tensor) -> tuple[Tensor, Tensor] | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return m, s


def corrupted_batches(x, y=None, name: str = "gaussian_noise", severity: int = 1, *,
                      mean=None, std=None, seed: int = 0, batch_size: int = 256, device=None,
                      table: str | CorruptionTable = "cifar", release_format: bool = False
                      ) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (corrupted x, y): normalised images are mapped to pixels with ``mean``/``std``
    (clamped to [0, 1]), corrupted with ``table``'s parameters (optionally stored as the
    released files are: ``released_format``) and normalised again; without mean/std ``x`` is
    taken to be pixels in [0, 1] already. One generator seeded with ``seed`` runs through all
    batches."""
    g = torch.Generator().manual_seed(seed)
    for xb, yb in iterate_batches(x, y, batch_size):
        if device is not None:
            xb = xb.to(device)
        ms = _stats(mean, std, xb)
        pix = xb if ms is None else (xb * ms[1] + ms[0]).clamp(0, 1)
        out = corrupt(pix, name, severity, g, table=table)
        if release_format:
            out = released_format(out, table)
        yield (out if ms is None else (out - ms[0]) / ms[1]), yb


def _attack(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
            random_start: bool, generator, mean, std) -> Tensor:
    ms = _stats(mean, std, x)
    x0 = x.detach() if ms is None else x.detach() * ms[1] + ms[0]
    p = x0.clone()
    if random_start and eps > 0:
        p = p + (2 * torch.rand(x.shape, generator=generator) - 1).to(x) * eps
    if ms is not None:
        p = p.clamp(0, 1)
    with eval_mode(model):
        # eps = 0 (the clean point of every sweep) can only come back as the clamped input
        # above: no forward and backward passes for it.
        for _ in range(steps if eps > 0 else 0):
            p.requires_grad_(True)
            logits = model(p if ms is None else (p - ms[0]) / ms[1])
            # summed, not averaged: the sign is the same, and no gradient underflows to 0
            loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, p)
            p = p.detach() + step_size * grad.sign()
            p = x0 + (p - x0).clamp(-eps, eps)
            if ms is not None:
                p = p.clamp(0, 1)
    p = p.detach()
    return p if ms is None else (p - ms[0]) / ms[1]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, mean=None, std=None) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad_x CE)."""
    return _attack(model, x, y.long(), eps, 1, eps, False, None, mean, std)


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10,
             step_size: float | None = None, *, random_start: bool = True,
             generator: torch.Generator | None = None, mean=None, std=None) -> Tensor:
    """L-inf projected gradient descent (Madry et al. 2018). ``step_size`` defaults to
    2.5 * eps / steps (Madry et al.'s rule)."""
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    return _attack(model, x, y.long(), eps, steps, step_size, random_start, generator, mean, std)


def adversarial_batches(model: nn.Module, x, y=None, eps: float = 8 / 255, *,
                        attack: str = "pgd", steps: int = 10, step_size: float | None = None,
                        random_start: bool = True, mean=None, std=None, seed: int = 0,
                        batch_size: int = 256, device=None
                        ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (adversarial x, y) per batch for ``attack`` in {"fgsm", "pgd"}."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack '{attack}'; use 'fgsm' or 'pgd'")
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device) if device is not None else model_device(model)
    for xb, yb in iterate_batches(x, y, batch_size):
        if yb is None:
            raise ValueError("attacks need labels: pass y, or batches of (x, y)")
        xb, yb = xb.to(device), torch.as_tensor(yb).long().to(device)
        if attack == "fgsm" or eps == 0:
            adv = fgsm(model, xb, yb, eps, mean=mean, std=std)
        else:
            adv = pgd_linf(model, xb, yb, eps, steps, step_size, random_start=random_start,
                           generator=g, mean=mean, std=std)
        yield adv, yb


def accuracy_under_corruptions(model: nn.Module, x, y=None, *, mean=None, std=None,
                               corruptions: Sequence[str] = tuple(CORRUPTIONS),
                               severities: Sequence[int] = SEVERITIES, seed: int = 0,
                               batch_size: int = 256, device=None,
                               table: str | CorruptionTable = "cifar",
                               release_format: bool = True) -> dict:
    """Accuracy on the clean data and under every corruption and severity, corrupted on the
    fly with ``table``'s parameters, in one pass over the data. ``x`` holds normalised images
    (undone with ``mean``/``std``) or, without them, pixels in [0, 1]. ``release_format``
    stores each corrupted batch as the released files are (``released_format``) before the
    model sees it. Returns ``clean_acc``, ``accuracy`` ({name: [S]}),
    ``mean_corruption_accuracy`` (over all corruptions and severities), ``severities`` and
    the provenance: ``source`` "on-the-fly", ``table``, ``frost``, ``release_format``."""
    tab = get_table(table)
    device = torch.device(device) if device is not None else model_device(model)
    gens = {(c, s): torch.Generator().manual_seed(seed + 1000 * i)
            for i, c in enumerate(corruptions) for s in severities}
    hits = {k: 0 for k in gens}
    clean = total = 0
    size = None
    with eval_mode(model), torch.no_grad():
        for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                           desc="corruptions", disable=None, leave=False):
            if yb is None:
                raise ValueError("accuracy needs labels: pass y, or batches of (x, y)")
            xb, yb = xb.to(device), torch.as_tensor(yb).cpu()
            size = size or min(xb.shape[-2:])
            ms = _stats(mean, std, xb)
            pix = xb if ms is None else (xb * ms[1] + ms[0]).clamp(0, 1)
            clean += int((model(xb).argmax(-1).cpu() == yb).sum())
            total += len(yb)
            for (c, s), g in gens.items():
                out = corrupt(pix, c, s, g, table=tab)
                if release_format:
                    out = released_format(out, tab)
                out = out if ms is None else (out - ms[0]) / ms[1]
                hits[(c, s)] += int((model(out).argmax(-1).cpu() == yb).sum())
    acc = {c: np.array([hits[(c, s)] / max(total, 1) for s in severities])
           for c in corruptions}
    return {"clean_acc": clean / max(total, 1), "accuracy": acc,
            "severities": list(severities), "corruptions": list(corruptions),
            "n_images": total,
            "mean_corruption_accuracy": float(np.mean([a.mean() for a in acc.values()])),
            "source": "on-the-fly", "table": tab.name, "table_title": tab.title,
            "table_reference": tab.reference, "native_size": tab.native_size,
            "image_size": size, "length_scale": length_scale(tab, size) if size else None,
            "frost": frost_source() if "frost" in corruptions else None,
            "release_format": release_format_name(tab) if release_format else "none (floats)"}


def accuracy_on_released(model: nn.Module, corrupted_set, clean, *, corruptions: Sequence[str],
                         severities: Sequence[int], preprocess: Callable,
                         max_images: int | None = None, batch_size: int = 256,
                         device=None) -> dict:
    """Accuracy on the released corrupted files (``corrupted_sets.CorruptedSet``): each
    (corruption, severity) streamed from disk as uint8 batches, normalised by ``preprocess``
    (the dataset's DevicePreprocess), and the clean accuracy on ``clean`` (normalised (x, y)
    batches of the test split). Same keys as ``accuracy_under_corruptions``, with ``source``
    "released files", ``root``, ``layout`` and ``n_images_per_condition``."""
    device = torch.device(device) if device is not None else model_device(model)
    acc: dict[str, np.ndarray] = {}
    counts: dict[str, list[int]] = {}
    clean_hits = clean_total = 0
    with eval_mode(model), torch.no_grad():
        for xb, yb in iterate_batches(clean, None):
            xb, yb = xb.to(device), torch.as_tensor(yb).cpu()
            clean_hits += int((model(xb).argmax(-1).cpu() == yb).sum())
            clean_total += len(yb)
        bar = tqdm(total=len(corruptions) * len(severities), desc="released files",
                   disable=None, leave=False)
        for c in corruptions:
            row, n_row = [], []
            for s in severities:
                hits = total = 0
                for xb, yb in corrupted_set.batches(c, s, batch_size=batch_size,
                                                    max_images=max_images):
                    xn, _ = preprocess(xb, yb)
                    hits += int((model(xn.to(device)).argmax(-1).cpu() == yb).sum())
                    total += len(yb)
                row.append(hits / max(total, 1))
                n_row.append(total)
                bar.update()
            acc[c], counts[c] = np.array(row), n_row
        bar.close()
    return {"clean_acc": clean_hits / max(clean_total, 1), "accuracy": acc,
            "severities": list(severities), "corruptions": list(corruptions),
            "n_images": clean_total, "n_images_per_condition": counts,
            "mean_corruption_accuracy": float(np.mean([a.mean() for a in acc.values()])),
            "source": "released files", "root": corrupted_set.root,
            "layout": corrupted_set.layout_name, "release_format": "as stored"}


def accuracy_under_attack(model: nn.Module, x, y=None, eps_list: Sequence[float] = (0, 1 / 255,
                          2 / 255, 4 / 255, 8 / 255), *, attack: str = "pgd", steps: int = 10,
                          step_size: float | None = None, random_start: bool = True,
                          mean=None, std=None, seed: int = 0, batch_size: int = 256,
                          device=None) -> dict:
    """Accuracy under ``attack`` ("fgsm" or "pgd") at each epsilon (eps = 0: clean), in one
    pass over the data. ``step_size`` defaults to 2.5 * eps / steps per epsilon. Returns
    ``eps``, ``accuracy[E]``, ``attack`` and the settings used."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack '{attack}'; use 'fgsm' or 'pgd'")
    device = torch.device(device) if device is not None else model_device(model)
    eps_list = [float(e) for e in eps_list]
    g = torch.Generator().manual_seed(seed)
    hits, total = np.zeros(len(eps_list)), 0
    for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                       desc=f"{attack} attack", disable=None, leave=False):
        if yb is None:
            raise ValueError("attacks need labels: pass y, or batches of (x, y)")
        xb, yb = xb.to(device), torch.as_tensor(yb).long().to(device)
        for i, eps in enumerate(eps_list):
            if attack == "fgsm" or eps == 0:
                adv = fgsm(model, xb, yb, eps, mean=mean, std=std)
            else:
                adv = pgd_linf(model, xb, yb, eps, steps, step_size, random_start=random_start,
                               generator=g, mean=mean, std=std)
            with eval_mode(model), torch.no_grad():
                hits[i] += int((model(adv).argmax(-1) == yb).sum())
        total += len(yb)
    return {"attack": attack, "eps": eps_list, "accuracy": hits / max(total, 1),
            "n_images": total, "steps": steps if attack == "pgd" else 1,
            "step_size": step_size, "random_start": random_start if attack == "pgd" else False,
            "space": "pixel" if mean is not None else "input"}


# --------------------------------------------------------------------------- the analysis

def corruption_names(spec: str) -> list[str]:
    """``--corruptions``: ``all`` (the 15 common), ``extra`` (CIFAR-10-C's 4 held-out: speckle
    noise, Gaussian blur, spatter, saturate), ``all+extra`` (19), or comma-separated names;
    groups and names can be mixed (``extra,fog``), duplicates dropped."""
    groups = {"all": list(COMMON), "extra": list(EXTRA), "all+extra": [*COMMON, *EXTRA]}
    names = [n for part in words(spec) for n in groups.get(part, [part])]
    known = [*COMMON, *EXTRA]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"--corruptions: unknown {', '.join(bad) or repr(spec)}; choose all, "
                          f"extra, all+extra or from {', '.join(known)}")
    return list(dict.fromkeys(names))


# The checks robustness and dimensionality share (both corrupt and attack).

def check_corruptions(opts) -> None:
    # normalised through the same parser as the command line: groups expanded, names checked
    opts.corruptions = tuple(corruption_names(",".join(opts.corruptions)))


def check_eps(opts, eps) -> None:
    """L-inf epsilons are in pixel units of images in [0, 1]: 0 (clean) up to 1."""
    bad = [e for e in eps if not 0 <= e <= 1]
    if bad:
        opts.fail("eps", ",".join(f"{e:g}" for e in eps), "give epsilons from 0 to 1 in pixel "
                  "units, e.g. 0,1/255,8/255")


def check_attack(opts) -> None:
    """PGD's ``steps`` and ``step_size``."""
    opts.at_least("steps", 1)
    if opts.step_size is not None and not opts.step_size > 0:
        opts.fail("step_size", opts.step_size, "give a step > 0, or leave it out for "
                  "2.5 * eps / steps")


# --corruption-table: a released set's parameters, or auto: the dataset's own (table_for).
CORRUPTION_TABLES = ("auto", *TABLES)


@dataclass
class RobustnessOptions(AnalysisOptions):
    """accuracy under common corruptions and attacks"""

    max_images: int = max_images_option(1000)
    corruptions: tuple[str, ...] = option(
        tuple(COMMON), "all (the 15 common), extra (speckle_noise, gaussian_blur, spatter, "
        "saturate), all+extra, or comma-separated names", parse=corruption_names,
        metavar="NAMES", shown="all")
    severities: tuple[int, ...] = option((1, 2, 3, 4, 5), "comma-separated severities 1-5",
                                         parse=numbers, shown="1,2,3,4,5")
    corruption_table: str = option(
        "auto", "parameters of which released set to corrupt with on the fly (auto: by "
        "dataset; cifar for cifar10/100, fashion_mnist, synthetic; tiny for tinyimagenet; "
        "imagenet for imagefolder)", choices=CORRUPTION_TABLES)
    corrupted_root: str | None = option(
        None, "evaluate on the released files instead: CIFAR-10-C/-100-C (<corruption>.npy + "
        "labels.npy) or Tiny-ImageNet-C/ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG)",
        metavar="DIR")
    raw_corruptions: bool = option(False, "on the fly: feed the corrupted floats, without the "
                                   "released files' 8-bit (and JPEG q85) storage")
    eps: tuple[float, ...] = option((0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.031),
                                    "L-inf epsilons in pixel units (0-1), e.g. 0,1/255,8/255",
                                    parse=numbers, shown="0,0.001,0.002,0.004,0.008,0.016,0.031")
    attack: tuple[str, ...] = option(("fgsm", "pgd"), "fgsm, pgd or fgsm,pgd", parse=words,
                                     shown="fgsm,pgd")
    steps: int = option(10, "PGD steps", parse=whole_number)
    step_size: float | None = option(None, "PGD step size", parse=number,
                                     shown="2.5 * eps / steps")

    def check(self) -> None:
        super().check()
        check_corruptions(self)
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            self.fail("severities", ",".join(f"{s:g}" for s in self.severities),
                      "use numbers from 1 to 5")
        self.severities = tuple(int(s) for s in self.severities)
        if not self.eps:
            self.fail("eps", "''", "give at least one epsilon, e.g. 0")
        check_eps(self, self.eps)
        if not self.attack or any(a not in ("fgsm", "pgd") for a in self.attack):
            self.fail("attack", ",".join(self.attack), "use fgsm, pgd or fgsm,pgd")
        check_attack(self)


Options = RobustnessOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("clean_acc", "mean_corruption_accuracy", "mean_fgsm_accuracy",
                  "mean_pgd_accuracy")


def compute(target: Target, opts: RobustnessOptions) -> dict:
    """``seltrain analyze robustness``: accuracy under the common corruptions, either
    corrupted on the fly with the parameter table of the matching released set
    (``opts.corruption_table``, default by dataset) or read from the released files
    (``opts.corrupted_root``), and under FGSM / PGD. Returns ``{"corruptions", "attacks",
    "corruption_source", "summary"}``."""
    # In one process: every corruption in one pass over the data.
    whole = [("corruptions", None, None)] + [("attack", a, None) for a in opts.attack]
    return merge(target, opts, [compute_chunk(target, opts, c) for c in whole])


def chunks(opts: RobustnessOptions) -> list:
    """The parts of one robustness analysis that can run apart (seltrain.analysis.fanout):
    one per corruption and severity on the fly (each (corruption, severity) has its own
    random stream, seeded by the corruption's place in the list, so a part draws what the
    whole run draws), all corruptions at once from the released files, and one per attack
    (PGD's random starts share one stream over every epsilon, so an attack's epsilons stay
    together)."""
    names, sev = list(opts.corruptions), list(opts.severities)
    parts: list = [("corruptions", None, None)] if opts.corrupted_root else \
        [("corruptions", i, s) for i in range(len(names)) for s in sev]
    return parts + [("attack", a, None) for a in opts.attack]


def chunk_label(opts: RobustnessOptions, chunk) -> str:
    kind, a, b = chunk
    if kind == "attack":
        return f"{a} attack"
    return "corruptions" if a is None else f"{opts.corruptions[a]} severity {b}"


def compute_chunk(target: Target, opts: RobustnessOptions, chunk) -> dict:
    """One part of ``chunks(opts)``: accuracies under its corruptions or its attack."""
    from seltrain.analysis.corrupted_sets import open_corrupted_set, training_class_keys

    kind, a, b = chunk
    mean, std = target.info.mean, target.info.std
    cfg = target.cfg
    if kind == "attack":
        return {"attack": accuracy_under_attack(
            target.model, target.data, eps_list=list(opts.eps), attack=a, steps=opts.steps,
            step_size=opts.step_size, mean=mean, std=std, seed=opts.seed,
            device=target.device)}
    if opts.corrupted_root:
        names, sev = list(opts.corruptions), list(opts.severities)
        cset = open_corrupted_set(
            opts.corrupted_root, channels=target.info.channels, size=target.image_size,
            class_keys=lambda: training_class_keys(cfg.data.dataset, cfg.data.root,
                                                   target.info),
            num_classes=target.info.num_classes, num_workers=cfg.data.num_workers)
        cset.require(names, sev)
        corr = accuracy_on_released(target.model, cset, target.data, corruptions=names,
                                    severities=sev, preprocess=target.data.preprocess,
                                    max_images=target.data.max_images,
                                    batch_size=cfg.train.eval_batch_size, device=target.device)
        return {"corruptions": corr,
                "source": f"released files {corr['root']} ({corr['layout']})"}
    table = table_for(cfg.data.dataset, opts.corruption_table)
    names, sev, seed = list(opts.corruptions), list(opts.severities), opts.seed
    if a is not None:  # one corruption at one severity, seeded as in the whole run
        names, sev, seed = [names[a]], [b], seed + 1000 * a
    corr = accuracy_under_corruptions(target.model, target.data, mean=mean, std=std,
                                      corruptions=names, severities=sev, seed=seed,
                                      device=target.device, table=table,
                                      release_format=not opts.raw_corruptions)
    return {"corruptions": corr, "index": None if a is None else (a, b)}


def _merged_corruptions(opts: RobustnessOptions, parts: list[dict]) -> dict:
    """The result of ``accuracy_under_corruptions`` over every corruption and severity, from
    its one-corruption, one-severity parts (the same numbers in the same order)."""
    names, sev = list(opts.corruptions), list(opts.severities)
    by = {p["index"]: p["corruptions"] for p in parts}
    first = by[(0, sev[0])]
    acc = {c: np.array([by[(i, s)]["accuracy"][c][0] for s in sev])
           for i, c in enumerate(names)}
    return dict(first, accuracy=acc, severities=sev, corruptions=names,
                mean_corruption_accuracy=float(np.mean([a.mean() for a in acc.values()])),
                frost=frost_source() if "frost" in names else None)


def merge(target: Target, opts: RobustnessOptions, parts: list[dict]) -> dict:
    """The analysis' result from the results of its ``chunks`` (in their order)."""
    names, sev = list(opts.corruptions), list(opts.severities)
    attacks = {p["attack"]["attack"]: p["attack"] for p in parts if "attack" in p}
    corr_parts = [p for p in parts if "corruptions" in p]
    if opts.corrupted_root:
        corr, source = corr_parts[0]["corruptions"], corr_parts[0]["source"]
    else:
        corr = corr_parts[0]["corruptions"] if corr_parts[0]["index"] is None \
            else _merged_corruptions(opts, corr_parts)
        source = (f"on the fly, {corr['table_title']} table ({corr['table_reference']}) at "
                  f"{corr['image_size']} px (lengths x{corr['length_scale']:.3g}), stored as "
                  f"{corr['release_format']}")
    attacks = {a: attacks[a] for a in opts.attack}
    adv_mean = {a: float(np.mean([acc for e, acc in zip(r["eps"], r["accuracy"]) if e > 0]))
                if any(e > 0 for e in r["eps"]) else math.nan for a, r in attacks.items()}
    summary = {"clean_acc": corr["clean_acc"],
               "mean_corruption_accuracy": corr["mean_corruption_accuracy"],
               "corruption_accuracy_by_severity": {
                   s: float(np.mean([corr["accuracy"][c][i] for c in names]))
                   for i, s in enumerate(sev)},
               "corruption_source": corr["source"], "corruption_table": corr.get("table"),
               **{f"mean_{a}_accuracy": v for a, v in adv_mean.items()},
               "attack_accuracy": {a: dict(zip(map(str, r["eps"]), r["accuracy"]))
                                   for a, r in attacks.items()}}
    return {"corruptions": corr, "corruption_source": source, "attacks": attacks,
            "summary": summary}


def write(r: dict, target: Target, opts: RobustnessOptions, out: str) -> list[str]:
    """robustness.json, corruptions.csv, attacks.csv, their figures and summary.json in
    ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    corr, attacks, summary = r["corruptions"], r["attacks"], r["summary"]
    names, sev, eps = corr["corruptions"], corr["severities"], list(opts.eps)
    write_json(os.path.join(out, "robustness.json"),
               {"checkpoint": target.ckpt_path, "split": target.split, "corruptions": corr,
                "corruption_source": r["corruption_source"], "attacks": attacks})
    n_rows = len(names) * len(sev)
    write_csv(os.path.join(out, "corruptions.csv"),
              {"corruption": [c for c in names for _ in sev],
               "severity": [s for _ in names for s in sev],
               "accuracy": [corr["accuracy"][c][i] for c in names for i in range(len(sev))],
               "source": [corr["source"]] * n_rows, "table": [corr.get("table", "")] * n_rows})
    write_csv(os.path.join(out, "attacks.csv"),
              {"attack": [a for a in attacks for _ in eps],
               "eps": [e for _ in attacks for e in eps],
               "accuracy": [a["accuracy"][i] for a in attacks.values() for i in range(len(eps))]})
    plots.corruption_accuracy(corr, os.path.join(out, "corruptions.png"))
    plots.attack_accuracy(attacks, os.path.join(out, "attacks.png"))
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"corruptions: {r['corruption_source']}"]
    if corr.get("frost"):
        lines.append(f"  frost: {corr['frost']}")
    lines += [f"clean accuracy {corr['clean_acc']:.4f}; mean over {len(names)} corruptions x "
              f"{len(sev)} severities {corr['mean_corruption_accuracy']:.4f}",
              "  by severity: " + "  ".join(
                  f"{s}: {v:.3f}" for s, v in summary["corruption_accuracy_by_severity"].items())]
    for a, res in attacks.items():
        lines.append(f"  {a}: " + "  ".join(f"eps {e:g}: {acc:.3f}"
                                           for e, acc in zip(res["eps"], res["accuracy"])))
    return lines
