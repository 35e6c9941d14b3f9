"""``seltrain analyze {selectivity,ablation,orientation,robustness,dimensionality,gradients}
PATH``.

PATH is a checkpoint file, a run folder (its checkpoints/best.pt) or a Tune experiment folder
(every trials/<trial>/ run folder's best checkpoint). The data split is rebuilt from the
checkpoint's saved recipe (``--data-root`` points it elsewhere) and normalised like training
data. Each analysis writes JSON, CSV and PNG files into ``<run>/analysis/<name>/`` (or
``--out``; with several runs, ``--out/<trial>/``) and prints a short summary.

The math lives in the sibling modules (ablation, orientation, robustness, dimensionality,
gradients);
this module only wires checkpoints and data to them. ``run_analysis`` is the programmatic
entry point, also used by ``seltrain report --analyses`` (``sweep_analyses``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seltrain.errors import CheckpointError, ConfigError, DataError

ANALYSES = ("selectivity", "ablation", "orientation", "robustness", "dimensionality",
            "gradients")


# --------------------------------------------------------------------------- targets and data

def find_checkpoints(path: str) -> list[tuple[str, str]]:
    """[(run folder, checkpoint file)] for a checkpoint, a run folder or an experiment."""
    if os.path.isfile(path):
        ckpt = os.path.abspath(path)
        parent = os.path.dirname(ckpt)
        run = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
        return [(run, ckpt)]
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint, run folder or experiment at {path}")
    for cand in ("checkpoints/best.pt", "checkpoints/last.pt"):
        if os.path.isfile(os.path.join(path, cand)):
            return [(os.path.abspath(path), os.path.abspath(os.path.join(path, cand)))]
    root = os.path.join(path, "trials") if os.path.isdir(os.path.join(path, "trials")) else path
    found = []
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
        for cand in ("checkpoints/best.pt", "checkpoints/last.pt"):
            if os.path.isfile(os.path.join(run, cand)):
                found.append((os.path.abspath(run), os.path.abspath(os.path.join(run, cand))))
                break
    if not found:
        raise CheckpointError(f"{path} holds no checkpoints/best.pt, checkpoints/last.pt or "
                              "trials/*/checkpoints/best.pt")
    return found


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use cpu or auto")
    return torch.device(name)


class NormalisedBatches:
    """Re-iterable (x, y) batches of one split: normalised float images on the device, labels
    on the CPU, cut after ``max_images``. Streams from the loader, so no split is held in
    memory whole."""

    def __init__(self, loader, preprocess, max_images: int | None):
        self.loader, self.preprocess, self.max_images = loader, preprocess, max_images
        self.num_images = loader.num_samples if max_images is None \
            else min(max_images, loader.num_samples)

    def __len__(self) -> int:
        return -(-self.num_images // self.loader.batch_size)

    def __iter__(self):
        seen = 0
        for xb, yb in self.loader:
            if seen >= self.num_images:
                break
            take = min(len(yb), self.num_images - seen)
            x, _ = self.preprocess(xb[:take], yb[:take])
            seen += take
            yield x, yb[:take].long()


def split_loader(cfg, split: str):
    """(DatasetInfo, loader of uint8 batches, image size) for ``split`` ('val' or 'test'),
    carved exactly as training carved it (``train_val_indices``)."""
    from seltrain.data import load_dataset, train_val_indices
    from seltrain.data.loaders import ArrayLoader, FileLoader, RankSharding
    from seltrain.data.sources import ArraySplit

    if split not in ("val", "test"):
        raise ConfigError(f"--split {split}: use val or test")
    info, s = load_dataset(cfg, "train" if split == "val" else "test")
    if split == "val":
        idx = train_val_indices(cfg, len(s.labels))[1]
        if not len(idx):
            raise ConfigError("this run has no validation split (data.val_size=0); use --split "
                              "test")
    else:
        idx = np.arange(len(s.labels))
    common = dict(info=info, sharding=RankSharding(), seed=cfg.train.seed, train=False,
                  augment=False)
    bs = cfg.train.eval_batch_size
    if isinstance(s, ArraySplit):
        return info, ArrayLoader(s, idx, bs, **common), s.images.shape[1]
    size = cfg.data.image_size or info.image_size
    return info, FileLoader(s, idx, bs, size=size, num_workers=cfg.data.num_workers,
                            **common), size


@dataclass
class Target:
    """One checkpoint with its model, recipe and data, ready to analyse."""
    run_dir: str
    ckpt_path: str
    model: Any
    ckpt: dict
    cfg: Any
    info: Any
    data: NormalisedBatches
    device: torch.device
    image_size: int
    layers: list[str]
    split: str

    @property
    def name(self) -> str:
        return os.path.basename(self.run_dir)


def resolve_analysis_layers(model, spec: list[str] | None, default: list[str]) -> list[str]:
    """Layer names from ``--layers``: probe names, probe groups (all, blocks) or module paths."""
    from seltrain.analysis.capture import resolve_layer

    if not spec:
        return list(default)
    groups = model.probe_groups() if hasattr(model, "probe_groups") else {}
    names: list[str] = []
    for item in spec:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if part in groups:
                names.extend(groups[part])
            else:
                resolve_layer(model, part)  # raises LayerError (one line) naming valid layers
                names.append(part)
    return list(dict.fromkeys(names))


def load_target(run_dir: str, ckpt_path: str, args) -> Target:
    from seltrain.data import DevicePreprocess
    from seltrain.trainer import load_trained_model

    device = pick_device(args.device)
    try:
        model, ckpt, cfg = load_trained_model(ckpt_path, device=device)
    except (CheckpointError, ConfigError):
        raise
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt_path} does not match a seltrain model "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    cfg.data.loader = "torch"  # the analyses stream the split from its source files
    if args.data_root:
        cfg.data.root = args.data_root
    try:
        info, loader, size = split_loader(cfg, args.split)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read the {cfg.data.dataset} {args.split} split ({e}); pass "
                        "--data-root") from None
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = DevicePreprocess(info, device, cfg.train.channels_last)
    layers = resolve_analysis_layers(model, args.layers, ckpt.get("layer_names") or [])
    max_images = args.max_images if args.max_images and args.max_images > 0 else None
    return Target(run_dir=run_dir, ckpt_path=ckpt_path, model=model, ckpt=ckpt, cfg=cfg,
                  info=info, data=NormalisedBatches(loader, pre, max_images), device=device,
                  image_size=size, layers=layers, split=args.split)


def _out_dir(target: Target, args, name: str, n_targets: int) -> str:
    """The output folder, made here so that a path that cannot be one is a one-line error."""
    if args.out:
        out = os.path.join(args.out, target.name) if n_targets > 1 else args.out
    else:
        out = os.path.join(target.run_dir, "analysis", name)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        probe = os.path.abspath(out)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        why = f"{probe} is a file, not a folder" if os.path.isfile(probe) else e.strerror
        raise ConfigError(f"cannot write the {name} results to {out}: {why}; pass --out with "
                          "a folder you can write") from None
    return out


# --------------------------------------------------------------------------- the analyses

def compute_selectivity(target: Target) -> dict:
    """Exact dataset-level SI, class means and preferred class per unit of each layer, read
    exactly as the trainer reads them (probes.unit_activation, float64 class sums)."""
    from seltrain.analysis.capture import layer_outputs, resolve_layer
    from seltrain.probes import unit_activation
    from seltrain.selectivity import SelectivityAccumulator

    mods = {n: resolve_layer(target.model, n)[1] for n in target.layers}
    acc = None
    for outs, _, yb in layer_outputs(target.model, mods, target.data, desc="selectivity"):
        acts = {n: unit_activation(o) for n, o in outs.items()}
        if acc is None:
            acc = SelectivityAccumulator({n: acts[n].shape[1] for n in target.layers},
                                         target.info.num_classes, target.device)
        acc.update(acts, yb.to(target.device))
    if acc is None:
        raise DataError(f"the {target.split} split is empty")
    si = {n: v.cpu().numpy() for n, v in acc.si(target.cfg.selectivity.eps).items()}
    means = {n: v.cpu().numpy() for n, v in acc.class_means().items()}  # [K, U]
    return {"si": si, "class_means": means,
            "preferred_class": {n: m.argmax(0) for n, m in means.items()},
            "n_images": int(acc.counts.sum())}


def analyze_selectivity(target: Target, args, out: str) -> dict:
    from seltrain.analysis import plots
    from seltrain.analysis.serialize import write_csv, write_json

    r = compute_selectivity(target)
    per_layer = {n: float(v.mean()) for n, v in r["si"].items()}
    mean_si = float(np.mean(list(per_layer.values())))
    write_json(os.path.join(out, "selectivity.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "n_images": r["n_images"],
        "mean_si": mean_si, "si_per_layer": per_layer, "si": r["si"],
        "preferred_class": r["preferred_class"],
        "class_means": {n: m.T for n, m in r["class_means"].items()}})
    for n, v in r["si"].items():
        write_csv(os.path.join(out, f"units_{n}.csv"),
                  {"unit": range(len(v)), "si": v, "preferred_class": r["preferred_class"][n]})
    plots.histograms(r["si"], os.path.join(out, "si_hist.png"), xlabel="SI",
                     value_range=(0, 1), title=f"class selectivity ({target.split})")
    plots.layer_means(r["si"], os.path.join(out, "si_per_layer.png"), ylabel="mean SI")
    lines = [f"mean SI {mean_si:.4f} over {len(per_layer)} layers ({r['n_images']} "
             f"{target.split} images)"]
    lines += [f"  {n:<24} {v:.4f}" for n, v in per_layer.items()]
    return {"mean_si": mean_si, "si_per_layer": per_layer, "lines": lines}


def analyze_ablation(target: Target, args, out: str) -> dict:
    from seltrain.analysis import ablation, plots
    from seltrain.analysis.serialize import write_csv, write_json

    sel = compute_selectivity(target)
    k = target.info.num_classes
    summary: dict = {"layers": {}}
    lines = []
    for name in target.layers:
        res = ablation.single_unit_ablation(target.model, name, target.data, num_classes=k,
                                            device=target.device)
        attrs = ablation.unit_attributes(target.model, name, target.data, num_classes=k,
                                         l1_weights=args.l1_weights, device=target.device)
        si = sel["si"][name]
        pref = attrs["preferred_class"]
        corr = ablation.correlations(res, {"si": si, "l1_norm": attrs["l1_norm"],
                                           "mean_activation": attrs["mean_activation"]}, pref)
        pref_drop = res["class_drops"][np.arange(len(pref)), pref]
        layer_out = {"single_unit": res, "attributes": attrs, "si": si,
                     "preferred_class_drop": pref_drop, "correlations": corr}
        write_csv(os.path.join(out, f"units_{name}.csv"), {
            "unit": range(len(si)), "si": si, "preferred_class": pref,
            "l1_norm": attrs["l1_norm"], "l1_norm_raw": attrs["l1_norm_raw"],
            "mean_activation": attrs["mean_activation"], "overall_drop": res["overall_drop"], "max_class_drop": res["max_class_drop"],
            "class_drop_std": res["class_drop_std"], "preferred_class_drop": pref_drop})
        write_csv(os.path.join(out, f"class_drops_{name}.csv"),
                  {"unit": range(len(si)), **{f"class_{c}": res["class_drops"][:, c]
                                              for c in range(res["class_drops"].shape[1])}})
        for drop, ylabel in (("max_class_drop", "max class drop"),
                             ("overall_drop", "overall accuracy drop")):
            plots.drop_scatter(si, res[drop], os.path.join(out, f"si_vs_{drop}_{name}.png"),
                               ylabel=ylabel, rho=corr[drop]["si"]["rho"], title=name)
        if args.cumulative:
            cum = ablation.cumulative_ablation(target.model, name, target.data, si=si,
                                               n_random=args.n_random, device=target.device)
            layer_out["cumulative"] = cum
            plots.cumulative_ablation(cum, os.path.join(out, f"cumulative_{name}.png"))
        write_json(os.path.join(out, f"ablation_{name}.json"), layer_out)
        rho = corr["max_class_drop"]["si"]
        summary["layers"][name] = {
            "baseline_acc": res["baseline_acc"], "mean_overall_drop":
                float(np.mean(res["overall_drop"])),
            "mean_max_class_drop": float(np.nanmean(res["max_class_drop"])),
            "rho_si_max_class_drop": rho["rho"], "p_si_max_class_drop": rho["p"],
            "rho_si_overall_drop": corr["overall_drop"]["si"]["rho"],
            "method": res["method"], "ablated_module": res["ablated_module"],
            "l1_weights": attrs["l1_weights"], "l1_batchnorm": attrs["l1_batchnorm"]}
        lines.append(f"  {name:<24} baseline {res['baseline_acc']:.4f}  mean drop "
                     f"{np.mean(res['overall_drop']):+.4f}  max class drop (mean) "
                     f"{np.nanmean(res['max_class_drop']):.4f}  rho(SI, max class drop) "
                     f"{rho['rho']:.3f} (p {rho['p']:.2g})")
    first = next(iter(summary["layers"].values()), {})
    summary["baseline_acc"] = first.get("baseline_acc")
    summary["mean_overall_drop"] = float(np.mean([v["mean_overall_drop"]
                                                  for v in summary["layers"].values()]))
    write_json(os.path.join(out, "summary.json"), summary)
    summary["lines"] = [f"single-unit ablation, {len(target.layers)} layers, "
                        f"{target.data.num_images} {target.split} images"] + lines
    return summary


def analyze_orientation(target: Target, args, out: str) -> dict:
    from seltrain.analysis import orientation as ori
    from seltrain.analysis import plots
    from seltrain.analysis.capture import resolve_layer
    from seltrain.analysis.serialize import write_csv, write_json

    if args.permutations < 1:
        raise ConfigError(f"--permutations {args.permutations}: need at least 1 shuffle of the "
                          "gratings for the null distribution")
    if not 0 < args.percentile <= 50:
        raise ConfigError(f"--percentile {args.percentile:g}: use a value in (0, 50] (Ukita: "
                          "50, the median)")
    stim = ori.stimuli(target.image_size, target.info.channels, target.info.mean,
                       target.info.std)
    params = ori.grating_parameters(target.image_size)
    angles = params["orientations_deg"]
    osis, gosis, null_osis, null_gosis, ranges, layers = {}, {}, {}, {}, {}, {}
    responses = ori.layers_grating_responses(target.model, target.layers, stim,
                                             device=target.device)
    perms = None
    for name in target.layers:
        R, best_f = ori.tuning_curves(responses[name])
        o, g = ori.osi(R, angles), ori.gosi(R, angles)
        # Ukita's controls: the same indices on shuffled gratings, and how far the preferred
        # orientation moves across the spatial frequencies a unit responds to
        null = ori.null_indices(responses[name], args.permutations, args.seed, angles)
        rng = ori.orientation_range(responses[name], angles)
        perms = null["permutations"]
        osis[name], gosis[name], ranges[name] = o, g, rng
        null_osis[name], null_gosis[name] = null["osi"], null["gosi"]
        selective = g > args.threshold
        layers[name] = {
            "osi": o, "gosi": g, "tuning_curves": R, "best_frequency": best_f,
            "preferred_orientation_deg": ori.preferred_orientation(R, angles),
            "orientation_range_deg": rng, "null_osi": null["osi"], "null_gosi": null["gosi"],
            "mean_osi": float(o.mean()), "mean_gosi": float(g.mean()),
            "fraction_selective": ori.fraction_selective(g, args.threshold),
            "mean_null_osi": float(null["osi"].mean()),
            "mean_null_gosi": float(null["gosi"].mean()),
            "fraction_selective_null": ori.fraction_selective(null["gosi"], args.threshold),
            "n_selective": int(selective.sum()),
            "mean_orientation_range_selective": float(np.nanmean(rng[selective]))
            if np.isfinite(rng[selective]).any() else math.nan}
        write_csv(os.path.join(out, f"units_{name}.csv"),
                  {"unit": range(len(o)), "osi": o, "gosi": g,
                   "null_osi": null["osi"][0], "null_gosi": null["gosi"][0],
                   "preferred_orientation_deg": layers[name]["preferred_orientation_deg"],
                   "best_period_px": params["periods_px"][best_f],
                   "orientation_range_deg": rng})
        plots.tuning_curves(R, os.path.join(out, f"tuning_{name}.png"),
                            orientations_deg=angles, title=name)
    plots.orientation_distributions(osis, gosis, os.path.join(out, "osi_gosi.png"),
                                    threshold=args.threshold)
    plots.null_distributions(osis, gosis, null_osis, null_gosis,
                             os.path.join(out, "osi_gosi_vs_permuted.png"))
    plots.orientation_ranges(ranges, gosis, os.path.join(out, "orientation_range.png"),
                             threshold=args.threshold)
    plots.layer_means(gosis, os.path.join(out, "gosi_per_layer.png"), ylabel="mean gOSI")

    # Ukita: ablate the top- vs bottom-gOSI units of each layer (strictly above/below the
    # median) at its ablation point; cross-entropy, accuracy and the shift invariance of the
    # layers above.
    split_abl, shift_before, shift_after = {}, {}, {}
    if not args.no_ablation:
        shift_before = ori.shift_invariance_layers(target.model, target.layers, target.data,
                                                   shift=args.shift, device=target.device)
        for i, name in enumerate(target.layers):
            r = ori.gosi_split_ablation(target.model, name, target.data, gosi_values=gosis[name],
                                        percentile=args.percentile, device=target.device)
            split_abl[name] = r
            above = target.layers[i + 1:]
            path = resolve_layer(target.model, name)[0]
            # the layers above the ablated one, with its top or bottom group silenced
            shift_after[name] = {
                group: ori.shift_invariance_layers(target.model, above, target.data,
                                                   shift=args.shift, device=target.device,
                                                   ablation=(path, r[group]["units"]))
                for group in ("top", "bottom")} if above else {}
        plots.gosi_split_ablation(split_abl, os.path.join(out, "gosi_split_ablation.png"))
    result = {"checkpoint": target.ckpt_path, "split": target.split, "threshold": args.threshold,
              "grating_parameters": params, "permutations": perms, "seed": args.seed,
              "layers": layers, "gosi_split_ablation": split_abl,
              "shift_invariance": {"shift": args.shift, "before": shift_before,
                                   "after_ablation": shift_after}}
    write_json(os.path.join(out, "orientation.json"), result)
    keys = ("mean_osi", "mean_gosi", "fraction_selective", "mean_null_osi", "mean_null_gosi",
            "fraction_selective_null", "mean_orientation_range_selective")
    summary = {"layers": {n: {k: v[k] for k in keys} for n, v in layers.items()}}
    summary["mean_gosi"] = float(np.mean([v["mean_gosi"] for v in layers.values()]))
    summary["mean_null_gosi"] = float(np.mean([v["mean_null_gosi"] for v in layers.values()]))
    summary["fraction_selective"] = float(np.mean(np.concatenate(list(gosis.values()))
                                                  > args.threshold))
    for n, r in split_abl.items():
        summary["layers"][n].update(
            ce_increase_top=r["top"]["ce_increase_mean"],
            ce_increase_bottom=r["bottom"]["ce_increase_mean"],
            n_top=r["top"]["n_units"], n_bottom=r["bottom"]["n_units"],
            acc_change_top=r["top"]["acc_change"], acc_change_bottom=r["bottom"]["acc_change"],
            ablated_module=r["ablated_module"], shift_invariance=shift_before[n]["mean"])
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"orientation selectivity (gOSI > {args.threshold:g}: "
             f"{summary['fraction_selective']:.1%} of units; mean gOSI "
             f"{summary['mean_gosi']:.3f}, on permuted gratings {summary['mean_null_gosi']:.3f})"]
    for n, s in summary["layers"].items():
        extra = ""
        if "ce_increase_top" in s:
            extra = (f"  dCE top/bottom {s['ce_increase_top']:+.4f}/"
                     f"{s['ce_increase_bottom']:+.4f}  shift-inv {s['shift_invariance']:.3f}")
        lines.append(f"  {n:<24} OSI {s['mean_osi']:.3f}  gOSI {s['mean_gosi']:.3f} "
                     f"(permuted {s['mean_null_gosi']:.3f})  selective "
                     f"{s['fraction_selective']:.1%}{extra}")
    summary["lines"] = lines
    return summary


def _corruption_names(spec: str) -> list[str]:
    """--corruptions: ``all`` (the 15 common), ``extra`` (CIFAR-10-C's 4 held-out: speckle
    noise, Gaussian blur, spatter, saturate), ``all+extra`` (19), or comma-separated names;
    groups and names can be mixed (``extra,fog``)."""
    from seltrain.analysis.robustness import CORRUPTIONS, EXTRA_CORRUPTIONS

    groups = {"all": list(CORRUPTIONS), "extra": list(EXTRA_CORRUPTIONS),
              "all+extra": [*CORRUPTIONS, *EXTRA_CORRUPTIONS]}
    names: list[str] = []
    for part in (s.strip() for s in spec.split(",")):
        if part:
            names += groups.get(part, [part])
    known = [*CORRUPTIONS, *EXTRA_CORRUPTIONS]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"--corruptions: unknown {', '.join(bad) or repr(spec)}; choose all, "
                          f"extra, all+extra or from {', '.join(known)}")
    return list(dict.fromkeys(names))


def _floats(spec: str, what: str) -> list[float]:
    def one(s: str) -> float:
        num, _, den = s.partition("/")
        return float(num) / float(den) if den else float(num)

    try:
        return [one(s.strip()) for s in spec.split(",") if s.strip()]
    except Exception:  # noqa: BLE001 - any parse failure is the same user mistake
        raise ConfigError(f"{what}: cannot read '{spec}'; give comma-separated numbers such as "
                          "0.001,0.002 or 8/255") from None


def _severities(spec: str) -> list[int]:
    s = [int(v) for v in _floats(spec, "--severities")]
    if not s or any(v not in (1, 2, 3, 4, 5) for v in s):
        raise ConfigError(f"--severities {spec}: use numbers from 1 to 5")
    return s


def _attacks(spec: str) -> list[str]:
    a = [s.strip() for s in spec.split(",") if s.strip()]
    if not a or any(v not in ("fgsm", "pgd") for v in a):
        raise ConfigError(f"--attack {spec}: use fgsm, pgd or fgsm,pgd")
    return a


def analyze_robustness(target: Target, args, out: str) -> dict:
    """Accuracy under the common corruptions, either corrupted on the fly with the parameter
    table of the matching released set (``--corruption-table``, default by dataset) or read
    from the released files (``--corrupted-root``), and under FGSM / PGD."""
    from seltrain.analysis import plots
    from seltrain.analysis import robustness as rob
    from seltrain.analysis.corrupted_sets import open_corrupted_set, training_class_keys
    from seltrain.analysis.serialize import write_csv, write_json

    names, sev = _corruption_names(args.corruptions), _severities(args.severities)
    eps = _floats(args.eps, "--eps")
    mean, std = target.info.mean, target.info.std
    cfg = target.cfg
    if args.corrupted_root:
        cset = open_corrupted_set(
            args.corrupted_root, channels=target.info.channels, size=target.image_size,
            class_keys=lambda: training_class_keys(cfg.data.dataset, cfg.data.root,
                                                   target.info),
            num_classes=target.info.num_classes, num_workers=cfg.data.num_workers)
        cset.require(names, sev)
        corr = rob.accuracy_on_released(target.model, cset, target.data, corruptions=names,
                                        severities=sev, preprocess=target.data.preprocess,
                                        max_images=target.data.max_images,
                                        batch_size=cfg.train.eval_batch_size,
                                        device=target.device)
        source = f"released files {corr['root']} ({corr['layout']})"
    else:
        table = (rob.table_for(cfg.data.dataset) if args.corruption_table == "auto"
                 else rob.get_table(args.corruption_table))
        corr = rob.accuracy_under_corruptions(target.model, target.data, mean=mean, std=std,
                                              corruptions=names, severities=sev,
                                              seed=args.seed, device=target.device,
                                              table=table,
                                              release_format=not args.raw_corruptions)
        source = (f"on the fly, {table.title} table ({table.reference}) at "
                  f"{corr['image_size']} px (lengths x{corr['length_scale']:.3g}), stored as "
                  f"{corr['release_format']}")
    attacks = {a: rob.accuracy_under_attack(target.model, target.data, eps_list=eps, attack=a,
                                            steps=args.steps, step_size=args.step_size,
                                            mean=mean, std=std, seed=args.seed,
                                            device=target.device)
               for a in _attacks(args.attack)}
    write_json(os.path.join(out, "robustness.json"),
               {"checkpoint": target.ckpt_path, "split": target.split, "corruptions": corr,
                "corruption_source": source, "attacks": attacks})
    write_csv(os.path.join(out, "corruptions.csv"),
              {"corruption": [c for c in names for _ in sev],
               "severity": [s for _ in names for s in sev],
               "accuracy": [corr["accuracy"][c][i] for c in names for i in range(len(sev))],
               "source": [corr["source"]] * (len(names) * len(sev)),
               "table": [corr.get("table", "")] * (len(names) * len(sev))})
    write_csv(os.path.join(out, "attacks.csv"),
              {"attack": [a for a in attacks for _ in eps],
               "eps": [e for _ in attacks for e in eps],
               "accuracy": [r["accuracy"][i] for r in attacks.values() for i in range(len(eps))]})
    plots.corruption_accuracy(corr, os.path.join(out, "corruptions.png"))
    plots.attack_accuracy(attacks, os.path.join(out, "attacks.png"))
    adv_mean = {a: float(np.mean([acc for e, acc in zip(r["eps"], r["accuracy"]) if e > 0]))
                if any(e > 0 for e in r["eps"]) else math.nan for a, r in attacks.items()}
    by_sev = {s: float(np.mean([corr["accuracy"][c][i] for c in names]))
              for i, s in enumerate(sev)}
    summary = {"clean_acc": corr["clean_acc"],
               "mean_corruption_accuracy": corr["mean_corruption_accuracy"],
               "corruption_accuracy_by_severity": by_sev,
               "corruption_source": corr["source"], "corruption_table": corr.get("table"),
               **{f"mean_{a}_accuracy": v for a, v in adv_mean.items()},
               "attack_accuracy": {a: dict(zip(map(str, r["eps"]), r["accuracy"]))
                                   for a, r in attacks.items()}}
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"corruptions: {source}"]
    if corr.get("frost"):
        lines.append(f"  frost: {corr['frost']}")
    lines += [f"clean accuracy {corr['clean_acc']:.4f}; mean over {len(names)} corruptions x "
              f"{len(sev)} severities {corr['mean_corruption_accuracy']:.4f}",
              "  by severity: " + "  ".join(f"{s}: {v:.3f}" for s, v in by_sev.items())]
    for a, r in attacks.items():
        lines.append(f"  {a}: " + "  ".join(f"eps {e:g}: {acc:.3f}"
                                           for e, acc in zip(r["eps"], r["accuracy"])))
    summary["lines"] = lines
    return summary


def analyze_dimensionality(target: Target, args, out: str) -> dict:
    """Both dimensionality readings (seltrain/analysis/dimensionality.py) per layer: of the
    representation of clean, corrupted (mean over ``--corruptions`` at ``--severity``) and
    adversarial inputs, and of the perturbation-induced change; the increase over clean."""
    from seltrain.analysis import dimensionality as dim
    from seltrain.analysis import plots
    from seltrain.analysis import robustness as rob
    from seltrain.analysis.serialize import write_csv, write_json

    mean, std = target.info.mean, target.info.std
    names = _corruption_names(args.corruptions)
    eps = _floats(args.eps, "--eps")
    if len(eps) != 1:
        raise ConfigError("dimensionality takes one --eps, e.g. --eps 8/255")
    # the corruptions as `analyze robustness` makes them: the dataset's -C table, stored as
    # the released files are unless --raw-corruptions
    table = (rob.table_for(target.cfg.data.dataset) if args.corruption_table == "auto"
             else rob.get_table(args.corruption_table))
    kw = dict(spatial=args.spatial, device=target.device)
    clean = dim.layer_features(target.model, target.layers, target.data, **kw)
    rep = {"clean": {n: dim.feature_dimensionality(f, args.threshold, args.spatial)
                     for n, f in clean.items()}}
    change: dict = {}
    per_corruption = {}
    for c in names:
        per_corruption[c] = dim.perturbed_dimensionality(
            target.model, clean, rob.corrupted_batches(
                target.data, None, c, args.severity, mean=mean, std=std, seed=args.seed,
                table=table, release_format=not args.raw_corruptions),
            args.threshold, **kw)
    # "corrupted": the mean over the corruptions, per layer and reading
    for reading, into in (("representation", rep), ("change", change)):
        into["corrupted"] = dim.mean_reading([{n: per_corruption[c][n][reading]
                                               for n in target.layers} for c in names])
    adv = dim.perturbed_dimensionality(
        target.model, clean, rob.adversarial_batches(
            target.model, target.data, None, eps[0], attack=args.attack, steps=args.steps,
            step_size=args.step_size, mean=mean, std=std, seed=args.seed, device=target.device),
        args.threshold, **kw)
    rep["adversarial"] = {n: v["representation"] for n, v in adv.items()}
    change["adversarial"] = {n: v["change"] for n, v in adv.items()}
    inc = dim.increase(rep)
    early = dim.early_layers(target.layers, args.early_layers)
    result = {"representation": rep, "change": change, "increase": inc}
    write_json(os.path.join(out, "dimensionality.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "threshold": args.threshold,
        "spatial": args.spatial, "corruptions": names, "corruption_severity": args.severity,
        "corruption_table": table.name,
        "corruption_storage": ("raw floats" if args.raw_corruptions
                               else rob.release_format_name(table)),
        "attack": args.attack, "eps": eps[0], "steps": args.steps, "early_layers": early,
        "readings": {**dim.READINGS, "increase": "representation components of the perturbed "
                     "inputs minus those of the clean inputs"},
        **result,
        "per_corruption": {c: {reading: {n: v[reading] for n, v in r.items()}
                               for reading in ("representation", "change")}
                           for c, r in per_corruption.items()}})
    rows = [(reading, cond, n, res[n]) for reading, conds in (("representation", rep),
                                                              ("change", change))
            for cond, res in conds.items() for n in target.layers]
    write_csv(os.path.join(out, "dimensionality.csv"), {
        "reading": [r[0] for r in rows], "condition": [r[1] for r in rows],
        "layer": [r[2] for r in rows], "n_components": [r[3]["n_components"] for r in rows],
        "increase_over_clean": [inc[c][n] if reading == "representation" and c != "clean"
                                else np.nan for reading, c, n, _ in rows],
        "n_features": [r[3]["n_features"] for r in rows],
        "n_samples": [r[3]["n_samples"] for r in rows],
        "threshold": [args.threshold] * len(rows)})
    plots.dimensionality_readings(result, os.path.join(out, "dimensionality.png"),
                                  title=f"components for {args.threshold:.0%} of the variance")

    def mean_over(layers, values):
        return float(np.mean([values[n] for n in layers]))

    summary: dict = {"threshold": args.threshold, "early_layers": early}
    for cond, r in rep.items():
        summary[f"representation_components_{cond}"] = mean_over(
            target.layers, {n: v["n_components"] for n, v in r.items()})
    for cond, r in change.items():
        summary[f"change_components_{cond}"] = mean_over(
            target.layers, {n: v["n_components"] for n, v in r.items()})
        summary[f"early_change_components_{cond}"] = mean_over(
            early, {n: v["n_components"] for n, v in r.items()})
    for cond, r in inc.items():
        summary[f"early_increase_{cond}"] = mean_over(early, r)
    summary["layers"] = {n: {"representation": {c: rep[c][n]["n_components"] for c in rep},
                             "change": {c: change[c][n]["n_components"] for c in change},
                             "increase": {c: inc[c][n] for c in inc}} for n in target.layers}
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = rep["clean"][target.layers[0]]["n_samples"]
    lines = [f"principal components for {args.threshold:.0%} of the variance ({n_img} images; "
             f"corrupted: mean of {len(names)} at severity {args.severity}; adversarial: "
             f"{args.attack} eps {eps[0]:g})",
             f"  {'layer':<24} {'representation clean/corrupted/adversarial':>44}   "
             f"{'change corrupted/adversarial':>28}"]
    lines += [f"  {n:<24} {rep['clean'][n]['n_components']:>14} / "
              f"{rep['corrupted'][n]['n_components']:>9.1f} / "
              f"{rep['adversarial'][n]['n_components']:>13}   "
              f"{change['corrupted'][n]['n_components']:>15.1f} / "
              f"{change['adversarial'][n]['n_components']:>10}" for n in target.layers]
    lines.append(f"  early layers ({', '.join(early)}): increase over clean corrupted "
                 f"{summary['early_increase_corrupted']:+.1f}, adversarial "
                 f"{summary['early_increase_adversarial']:+.1f}; change corrupted "
                 f"{summary['early_change_components_corrupted']:.1f}, adversarial "
                 f"{summary['early_change_components_adversarial']:.1f}")
    summary["lines"] = lines
    return summary


def analyze_gradients(target: Target, args, out: str) -> dict:
    """Variability of the input gradients of each unit's activation, across images (per unit)
    and across units (per image): seltrain/analysis/gradients.py defines the statistics
    (seltrain's choice; the paper's is unconfirmed)."""
    from seltrain.analysis import gradients as grad
    from seltrain.analysis import plots
    from seltrain.analysis.serialize import write_csv, write_json

    std = target.info.std if args.wrt == "pixels" else None
    res = grad.gradient_variability(
        target.model, target.layers, target.data, batch_size=args.batch_size,
        unit_block=args.unit_block, max_units=args.max_units, seed=args.seed, std=std,
        device=target.device)
    means = {n: r["means"] for n, r in res.items()}
    write_json(os.path.join(out, "gradients.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "wrt": args.wrt,
        "activation": "spatial mean of the post-ReLU map (probes.unit_activation)",
        "statistics": grad.STATISTICS, "statistic_status": "unconfirmed: seltrain's choice, "
        "the paper's definition is not public", "batch_size": args.batch_size,
        "unit_block": args.unit_block, "max_units": args.max_units, "layers": res})
    for n, r in res.items():
        a, b = r["across_samples"], r["across_units"]
        write_csv(os.path.join(out, f"units_{n}.csv"), {
            "unit": r["units"], "direction": a["direction"], "norm_cv": a["norm_cv"],
            "zero_fraction": a["zero_fraction"], "mean_norm": a["mean_norm"]})
        write_csv(os.path.join(out, f"samples_{n}.csv"), {
            "sample": range(r["n_samples"]), "label": r["labels"],
            "direction": b["direction"], "norm_cv": b["norm_cv"],
            "zero_fraction": b["zero_fraction"], "mean_norm": b["mean_norm"]})
    plots.gradient_variability(means, os.path.join(out, "gradient_variability.png"),
                               title=f"input-gradient variability ({args.wrt})")
    plots.histograms({n: r["across_samples"]["direction"] for n, r in res.items()},
                     os.path.join(out, "across_samples_direction_hist.png"),
                     xlabel="1 - mean pairwise cosine", title="per unit, across images")
    summary: dict = {"wrt": args.wrt, "layers": means}
    for key in next(iter(means.values())):
        v = [m[key] for m in means.values() if math.isfinite(m[key])]
        summary[f"grad_{key}"] = float(np.mean(v)) if v else math.nan
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = next(iter(res.values()))["n_samples"]
    lines = [f"input-gradient variability ({n_img} images, gradients w.r.t. {args.wrt}): "
             "direction = 1 - mean pairwise cosine, CV = std/mean of the gradient norm",
             f"  {'layer':<24} {'across images: direction   CV':>32}   "
             f"{'across units: direction   CV':>30}   silent"]
    lines += [f"  {n:<24} {m['across_samples_direction']:>23.3f} "
              f"{m['across_samples_norm_cv']:>6.2f}   {m['across_units_direction']:>23.3f} "
              f"{m['across_units_norm_cv']:>6.2f}   {m['across_samples_zero_fraction']:>6.1%}"
              for n, m in means.items()]
    summary["lines"] = lines
    return summary


RUNNERS = {"selectivity": analyze_selectivity, "ablation": analyze_ablation,
           "orientation": analyze_orientation, "robustness": analyze_robustness,
           "dimensionality": analyze_dimensionality, "gradients": analyze_gradients}


def run_analysis(name: str, path: str, args, stream=sys.stdout) -> list[dict]:
    """Run analysis ``name`` on every checkpoint under ``path``; returns one summary per run
    (with ``run_dir``, ``out_dir`` and ``seconds``)."""
    targets = find_checkpoints(path)
    results = []
    for run_dir, ckpt in targets:
        t0 = time.perf_counter()
        target = load_target(run_dir, ckpt, args)
        if not target.layers:
            raise ConfigError(f"{ckpt} names no probed layers; pass --layers")
        out = _out_dir(target, args, name, len(targets))
        os.makedirs(out, exist_ok=True)
        torch.manual_seed(args.seed)
        summary = RUNNERS[name](target, args, out)
        summary.update(run_dir=run_dir, out_dir=out, seconds=time.perf_counter() - t0)
        lines = summary.pop("lines", [])
        print(f"{name}: {ckpt} ({target.split}, {target.data.num_images} images, "
              f"{target.device.type}, {summary['seconds']:.1f} s)", file=stream)
        for ln in lines:
            print(ln, file=stream)
        print(f"  wrote {out}", file=stream, flush=True)
        results.append(summary)
    return results


def _analyze(args) -> int:
    run_analysis(args.analysis, args.path, args)
    return 0


# --------------------------------------------------------------------------- sweeps

def default_args(name: str, path: str, extra: list[str] | None = None) -> argparse.Namespace:
    """The parsed options of ``seltrain analyze NAME PATH [extra]``, for programmatic use."""
    p = argparse.ArgumentParser(prog="seltrain")
    register(p.add_subparsers(dest="command"))
    # one option string serves every analysis of a sweep: each ignores what it does not take
    args, _unknown = p.parse_known_args(["analyze", name, path, *(extra or [])])
    return args


# --------------------------------------------------------------------------- the CLI

def _common(p: argparse.ArgumentParser, max_images: int | None) -> None:
    def count(text: str) -> int:  # a negative count used to mean "all" silently
        try:
            n = int(text)
        except ValueError:
            n = -1
        if n < 0:
            raise argparse.ArgumentTypeError(f"must be a count >= 0 (0: all), got {text!r}")
        return n

    def device(text: str) -> str:
        if text != "auto":
            try:
                torch.device(text)
            except (RuntimeError, ValueError):
                raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, "
                                                 "cuda or cuda:N") from None
        return text

    p.add_argument("path", help="a checkpoint (.pt), a run folder or a Tune experiment folder")
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="the data split, carved as in training (default: test)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="probe names, groups (all, blocks) or module paths (default: the "
                        "layers probed in training)")
    p.add_argument("--max-images", type=count, default=max_images,
                   help="use the first N images of the split (0: all; default: "
                        f"{max_images or 'all'})")
    p.add_argument("--device", type=device, default="auto",
                   help="auto (cuda if available), cpu or cuda")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run>/analysis/<analysis>)")
    p.add_argument("--data-root", default=None,
                   help="read the dataset from here instead of the recipe's data.root")
    p.add_argument("--seed", type=int, default=0, help="seed for corruptions, PGD, orders")


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a bad value is a one-line usage error)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: give a number >= 1")
    return v


def _share(text: str) -> float:
    """argparse type: a share of the variance in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{v:g}: give a share in (0, 1], e.g. 0.95")
    return v


def register(subparsers) -> None:
    a = subparsers.add_parser("analyze", help="analyse a trained checkpoint: selectivity, "
                              "ablation, orientation, robustness, dimensionality, gradients")
    asub = a.add_subparsers(dest="analysis", required=True)

    p = asub.add_parser("selectivity", help="exact SI per unit and layer, preferred classes")
    _common(p, None)

    p = asub.add_parser("ablation", help="single-unit (and cumulative) ablation, correlations "
                        "of the drops with SI, L1 norm and mean activation")
    _common(p, None)
    p.add_argument("--cumulative", action="store_true",
                   help="also cumulative ablation curves (SI high/low first, random)")
    p.add_argument("--n-random", type=int, default=5, help="random orders for --cumulative")
    p.add_argument("--l1-weights", default="bn_folded", choices=["bn_folded", "raw"],
                   help="incoming-weight L1: of the BatchNorm-folded effective weight "
                        "(default; BN cancels the raw conv scale) or of the raw weight")

    p = asub.add_parser("orientation", help="OSI/gOSI on gratings, top/bottom-gOSI ablation, "
                        "shift invariance")
    _common(p, 1000)
    p.add_argument("--threshold", type=float, default=0.33,
                   help="gOSI above this counts as orientation selective (Ukita: 0.33)")
    p.add_argument("--shift", type=int, default=2, help="pixels for shift invariance")
    p.add_argument("--no-ablation", action="store_true",
                   help="gratings only: skip the gOSI-split ablation and shift invariance")
    p.add_argument("--permutations", type=int, default=1,
                   help="shuffles of the gratings for the null OSI/gOSI distribution (Ukita: "
                        "1, drawn with --seed 0)")
    p.add_argument("--percentile", type=float, default=50.0,
                   help="ablate units strictly above the (100 - P)th and strictly below the "
                        "Pth gOSI percentile (Ukita: 50, the median)")

    p = asub.add_parser("robustness", help="accuracy under common corruptions and attacks")
    _common(p, 1000)
    p.add_argument("--corruptions", default="all",
                   help="all (the 15 common), extra (speckle_noise, gaussian_blur, spatter, "
                        "saturate), all+extra, or comma-separated names")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--corruption-table", default="auto",
                   choices=["auto", "cifar", "tiny", "imagenet"],
                   help="parameters of which released set to corrupt with on the fly (auto: "
                        "by dataset; cifar for cifar10/100, fashion_mnist, synthetic; tiny "
                        "for tinyimagenet; imagenet for imagefolder)")
    p.add_argument("--corrupted-root", default=None, metavar="DIR",
                   help="evaluate on the released files instead: CIFAR-10-C/-100-C "
                        "(<corruption>.npy + labels.npy) or Tiny-ImageNet-C/ImageNet-C "
                        "(<corruption>/<severity>/<wnid>/*.JPEG)")
    p.add_argument("--raw-corruptions", action="store_true",
                   help="on the fly: feed the corrupted floats, without the released files' "
                        "8-bit (and JPEG q85) storage")
    p.add_argument("--eps", default="0,0.001,0.002,0.004,0.008,0.016,0.031",
                   help="L-inf epsilons in pixel units (0-1), e.g. 0,1/255,8/255")
    p.add_argument("--attack", default="fgsm,pgd", help="fgsm, pgd or fgsm,pgd")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--step-size", type=float, default=None,
                   help="PGD step size (default 2.5 * eps / steps)")

    p = asub.add_parser("dimensionality", help="principal components for a share of the "
                        "variance of the representation of clean, corrupted and adversarial "
                        "inputs, and of the perturbation-induced change")
    _common(p, 1000)
    p.add_argument("--threshold", type=_share, default=0.95,
                   help="share of the variance to explain (default 0.95; the paper's value "
                        "is unconfirmed)")
    p.add_argument("--spatial", default="flatten", choices=["flatten", "mean"],
                   help="flatten: whole layer output; mean: spatial mean per unit")
    p.add_argument("--corruptions", default="all", help="all, or comma-separated names")
    p.add_argument("--severity", type=int, default=3, choices=[1, 2, 3, 4, 5])
    p.add_argument("--corruption-table", default="auto",
                   choices=["auto", "cifar", "tiny", "imagenet"],
                   help="corruption parameters of which released set (auto: by dataset, as "
                        "analyze robustness)")
    p.add_argument("--raw-corruptions", action="store_true",
                   help="feed the corrupted floats, without the released files' 8-bit (and "
                        "JPEG q85) storage")
    p.add_argument("--eps", default="0.031", help="one L-inf epsilon (pixel units)")
    p.add_argument("--attack", default="pgd", choices=["fgsm", "pgd"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--early-layers", type=_positive_int, default=None,
                   help="how many of the first layers count as early in the summary "
                        "(default: the first third, rounded up)")

    p = asub.add_parser("gradients", help="variability of each unit's input gradient across "
                        "images and across units")
    _common(p, 256)
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--unit-block", type=_positive_int, default=16,
                   help="units per vmapped backward pass (default 16); memory grows with "
                        "batch-size x unit-block")
    p.add_argument("--max-units", type=_positive_int, default=None,
                   help="a random subset (--seed) of at most this many units per layer "
                        "(default: every unit)")
    p.add_argument("--wrt", default="pixels", choices=["pixels", "input"],
                   help="gradients with respect to pixel values (default) or to the normalised "
                        "network input")
    a.set_defaults(func=_analyze)
    for sp in asub.choices.values():
        sp.set_defaults(func=_analyze)
