"""``seltrain analyze {selectivity,ablation,orientation,robustness,dimensionality} PATH``.

PATH is a checkpoint file, a run folder (its checkpoints/best.pt) or a Tune experiment folder
(every trials/<trial>/ run folder's best checkpoint). The data split is rebuilt from the
checkpoint's saved recipe (``--data-root`` points it elsewhere) and normalised like training
data. Each analysis writes JSON, CSV and PNG files into ``<run>/analysis/<name>/`` (or
``--out``; with several runs, ``--out/<trial>/``) and prints a short summary.

The math lives in the sibling modules (ablation, orientation, robustness, dimensionality);
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

ANALYSES = ("selectivity", "ablation", "orientation", "robustness", "dimensionality")


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
    if args.out:
        return os.path.join(args.out, target.name) if n_targets > 1 else args.out
    return os.path.join(target.run_dir, "analysis", name)


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
                                         device=target.device)
        si = sel["si"][name]
        pref = attrs["preferred_class"]
        corr = ablation.correlations(res, {"si": si, "l1_norm": attrs["l1_norm"],
                                           "mean_activation": attrs["mean_activation"]}, pref)
        pref_drop = res["class_drops"][np.arange(len(pref)), pref]
        layer_out = {"single_unit": res, "attributes": attrs, "si": si,
                     "preferred_class_drop": pref_drop, "correlations": corr}
        write_csv(os.path.join(out, f"units_{name}.csv"), {
            "unit": range(len(si)), "si": si, "preferred_class": pref,
            "l1_norm": attrs["l1_norm"], "mean_activation": attrs["mean_activation"],
            "overall_drop": res["overall_drop"], "max_class_drop": res["max_class_drop"],
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
            "method": res["method"]}
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

    stim = ori.stimuli(target.image_size, target.info.channels, target.info.mean,
                       target.info.std)
    params = ori.grating_parameters(target.image_size)
    osis, gosis, layers = {}, {}, {}
    responses = ori.layers_grating_responses(target.model, target.layers, stim,
                                             device=target.device)
    for name in target.layers:
        R, best_f = ori.tuning_curves(responses[name])
        o, g = ori.osi(R), ori.gosi(R)
        osis[name], gosis[name] = o, g
        layers[name] = {"osi": o, "gosi": g, "tuning_curves": R, "best_frequency": best_f,
                        "preferred_orientation_deg": ori.preferred_orientation(R),
                        "mean_osi": float(o.mean()), "mean_gosi": float(g.mean()),
                        "fraction_selective": ori.fraction_selective(g, args.threshold)}
        write_csv(os.path.join(out, f"units_{name}.csv"),
                  {"unit": range(len(o)), "osi": o, "gosi": g,
                   "preferred_orientation_deg": layers[name]["preferred_orientation_deg"],
                   "best_period_px": params["periods_px"][best_f]})
        plots.tuning_curves(R, os.path.join(out, f"tuning_{name}.png"),
                            orientations_deg=params["orientations_deg"], title=name)
    plots.orientation_distributions(osis, gosis, os.path.join(out, "osi_gosi.png"),
                                    threshold=args.threshold)
    plots.layer_means(gosis, os.path.join(out, "gosi_per_layer.png"), ylabel="mean gOSI")

    # Ukita: ablate the top- vs bottom-50% gOSI units of each layer; cross-entropy, accuracy
    # and the shift invariance of the layers above.
    split_abl, shift_before, shift_after = {}, {}, {}
    if not args.no_ablation:
        shift_before = ori.shift_invariance_layers(target.model, target.layers, target.data,
                                                   shift=args.shift, device=target.device)
        for i, name in enumerate(target.layers):
            r = ori.gosi_split_ablation(target.model, name, target.data, gosi_values=gosis[name],
                                        device=target.device)
            split_abl[name] = r
            above = target.layers[i + 1:]
            path = resolve_layer(target.model, name)[0]
            # the layers above the ablated one, with its top or bottom half silenced
            shift_after[name] = {
                group: ori.shift_invariance_layers(target.model, above, target.data,
                                                   shift=args.shift, device=target.device,
                                                   ablation=(path, r[group]["units"]))
                for group in ("top", "bottom")} if above else {}
    result = {"checkpoint": target.ckpt_path, "split": target.split, "threshold": args.threshold,
              "grating_parameters": params, "layers": layers, "gosi_split_ablation": split_abl,
              "shift_invariance": {"shift": args.shift, "before": shift_before,
                                   "after_ablation": shift_after}}
    write_json(os.path.join(out, "orientation.json"), result)
    summary = {"layers": {n: {k: v[k] for k in ("mean_osi", "mean_gosi", "fraction_selective")}
                          for n, v in layers.items()}}
    summary["mean_gosi"] = float(np.mean([v["mean_gosi"] for v in layers.values()]))
    summary["fraction_selective"] = float(np.mean(np.concatenate(list(gosis.values()))
                                                  > args.threshold))
    for n, r in split_abl.items():
        summary["layers"][n].update(
            ce_increase_top=r["top"]["ce_increase_mean"],
            ce_increase_bottom=r["bottom"]["ce_increase_mean"],
            acc_change_top=r["top"]["acc_change"], acc_change_bottom=r["bottom"]["acc_change"],
            shift_invariance=shift_before[n]["mean"])
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"orientation selectivity (gOSI > {args.threshold:g}: "
             f"{summary['fraction_selective']:.1%} of units)"]
    for n, s in summary["layers"].items():
        extra = ""
        if "ce_increase_top" in s:
            extra = (f"  dCE top/bottom {s['ce_increase_top']:+.4f}/"
                     f"{s['ce_increase_bottom']:+.4f}  shift-inv {s['shift_invariance']:.3f}")
        lines.append(f"  {n:<24} OSI {s['mean_osi']:.3f}  gOSI {s['mean_gosi']:.3f}  "
                     f"selective {s['fraction_selective']:.1%}{extra}")
    summary["lines"] = lines
    return summary


def _corruption_names(spec: str) -> list[str]:
    from seltrain.analysis.robustness import CORRUPTIONS

    if spec == "all":
        return list(CORRUPTIONS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise ConfigError(f"--corruptions: unknown {', '.join(bad)}; choose all or from "
                          f"{', '.join(CORRUPTIONS)}")
    return names


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
    from seltrain.analysis import plots
    from seltrain.analysis import robustness as rob
    from seltrain.analysis.serialize import write_csv, write_json

    names, sev = _corruption_names(args.corruptions), _severities(args.severities)
    eps = _floats(args.eps, "--eps")
    mean, std = target.info.mean, target.info.std
    corr = rob.accuracy_under_corruptions(target.model, target.data, mean=mean, std=std,
                                          corruptions=names, severities=sev, seed=args.seed,
                                          device=target.device)
    attacks = {a: rob.accuracy_under_attack(target.model, target.data, eps_list=eps, attack=a,
                                            steps=args.steps, step_size=args.step_size,
                                            mean=mean, std=std, seed=args.seed,
                                            device=target.device)
               for a in _attacks(args.attack)}
    write_json(os.path.join(out, "robustness.json"),
               {"checkpoint": target.ckpt_path, "split": target.split, "corruptions": corr,
                "attacks": attacks})
    write_csv(os.path.join(out, "corruptions.csv"),
              {"corruption": [c for c in names for _ in sev],
               "severity": [s for _ in names for s in sev],
               "accuracy": [corr["accuracy"][c][i] for c in names for i in range(len(sev))]})
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
               **{f"mean_{a}_accuracy": v for a, v in adv_mean.items()},
               "attack_accuracy": {a: dict(zip(map(str, r["eps"]), r["accuracy"]))
                                   for a, r in attacks.items()}}
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"clean accuracy {corr['clean_acc']:.4f}; mean over {len(names)} corruptions x "
             f"{len(sev)} severities {corr['mean_corruption_accuracy']:.4f}",
             "  by severity: " + "  ".join(f"{s}: {v:.3f}" for s, v in by_sev.items())]
    for a, r in attacks.items():
        lines.append(f"  {a}: " + "  ".join(f"eps {e:g}: {acc:.3f}"
                                           for e, acc in zip(r["eps"], r["accuracy"])))
    summary["lines"] = lines
    return summary


def analyze_dimensionality(target: Target, args, out: str) -> dict:
    from seltrain.analysis import plots
    from seltrain.analysis import robustness as rob
    from seltrain.analysis.dimensionality import layer_dimensionality
    from seltrain.analysis.serialize import write_csv, write_json

    mean, std = target.info.mean, target.info.std
    names = _corruption_names(args.corruptions)
    eps = _floats(args.eps, "--eps")
    if len(eps) != 1:
        raise ConfigError("dimensionality takes one --eps, e.g. --eps 8/255")

    def dims(x):
        return layer_dimensionality(target.model, target.layers, x, args.threshold,
                                    spatial=args.spatial, device=target.device)

    res = {"clean": dims(target.data)}
    per_corruption = {}
    for c in names:
        batches = list(rob.corrupted_batches(target.data, None, c, args.severity, mean=mean,
                                             std=std, seed=args.seed))
        per_corruption[c] = dims(batches)
    # "corrupted": the mean over the corruptions, per layer
    res["corrupted"] = {n: {**res["clean"][n], "n_components": float(np.mean(
        [per_corruption[c][n]["n_components"] for c in names]))} for n in target.layers}
    adv = list(rob.adversarial_batches(target.model, target.data, None, eps[0], attack=args.attack,
                                       steps=args.steps, step_size=args.step_size, mean=mean,
                                       std=std, seed=args.seed, device=target.device))
    res["adversarial"] = dims(adv)
    write_json(os.path.join(out, "dimensionality.json"),
               {"checkpoint": target.ckpt_path, "split": target.split,
                "threshold": args.threshold, "spatial": args.spatial,
                "corruption_severity": args.severity, "attack": args.attack, "eps": eps[0],
                "conditions": res, "per_corruption": per_corruption})
    write_csv(os.path.join(out, "dimensionality.csv"),
              {"layer": target.layers,
               **{cond: [res[cond][n]["n_components"] for n in target.layers] for cond in res},
               "n_features": [res["clean"][n]["n_features"] for n in target.layers],
               "n_samples": [res["clean"][n]["n_samples"] for n in target.layers]})
    plots.dimensionality(res, os.path.join(out, "dimensionality.png"),
                         title=f"components for {args.threshold:.0%} variance")
    summary = {f"mean_{c}_components": float(np.mean([res[c][n]["n_components"]
                                                      for n in target.layers])) for c in res}
    summary["layers"] = {n: {c: res[c][n]["n_components"] for c in res} for n in target.layers}
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"principal components for {args.threshold:.0%} of the variance "
             f"({res['clean'][target.layers[0]]['n_samples']} images): clean / corrupted "
             f"(severity {args.severity}, mean of {len(names)}) / {args.attack} eps {eps[0]:g}"]
    lines += [f"  {n:<24} {res['clean'][n]['n_components']:>5} / "
              f"{res['corrupted'][n]['n_components']:>7.1f} / "
              f"{res['adversarial'][n]['n_components']:>5}" for n in target.layers]
    summary["lines"] = lines
    return summary


RUNNERS = {"selectivity": analyze_selectivity, "ablation": analyze_ablation,
           "orientation": analyze_orientation, "robustness": analyze_robustness,
           "dimensionality": analyze_dimensionality}


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


# Per-trial numbers that `seltrain report --analyses` plots against alpha and mean SI.
SWEEP_METRICS = {
    "selectivity": ("mean_si",),
    "ablation": ("mean_overall_drop",),
    "orientation": ("mean_gosi", "fraction_selective"),
    "robustness": ("clean_acc", "mean_corruption_accuracy", "mean_fgsm_accuracy",
                   "mean_pgd_accuracy"),
    "dimensionality": ("mean_clean_components", "mean_corrupted_components",
                       "mean_adversarial_components"),
}


def sweep_analyses(exp_dir: str, analyses: list[str], trials: list[dict], *,
                   extra: list[str] | None = None, out=sys.stdout) -> dict:
    """Run ``analyses`` on each trial's best checkpoint and plot their headline numbers against
    alpha and against mean SI into <exp>/plots/. ``trials``: rows of ``collect_trials``.
    Returns {"rows": [...], "plots": [...]}; writes <exp>/analysis_results.csv."""
    from seltrain.analysis import plots
    from seltrain.analysis.serialize import write_csv

    bad = [a for a in analyses if a not in ANALYSES]
    if bad:
        raise ConfigError(f"--analyses: unknown {', '.join(bad)}; choose from "
                          f"{', '.join(ANALYSES)}")
    root = os.path.join(exp_dir, "trials")
    root = root if os.path.isdir(root) else exp_dir
    rows = []
    for t in trials:
        run = os.path.join(root, t["trial"])
        if not os.path.isfile(os.path.join(run, "checkpoints", "best.pt")):
            continue
        row = {"trial": t["trial"], "alpha": t["alpha"], "seed": t["seed"],
               "mean_si": t.get("test_si")}
        for a in analyses:
            s, = run_analysis(a, run, default_args(a, run, extra), stream=out)
            row.update({k: s.get(k) for k in SWEEP_METRICS[a]})
        rows.append(row)
    if not rows:
        raise CheckpointError(f"no trial in {exp_dir} has checkpoints/best.pt")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(os.path.join(exp_dir, "analysis_results.csv"),
              {c: [np.nan if r.get(c) is None else r.get(c) for r in rows] for c in cols})
    metrics = [m for a in analyses for m in SWEEP_METRICS[a] if m != "mean_si"]
    paths = []
    alpha = [r["alpha"] for r in rows]
    si = [np.nan if r["mean_si"] is None else r["mean_si"] for r in rows]
    for m in metrics:
        y = [np.nan if r.get(m) is None else r[m] for r in rows]
        paths.append(plots.against(alpha, {m: y}, os.path.join(exp_dir, "plots",
                                                                f"analysis_{m}_vs_alpha.png"),
                                   xlabel="alpha", ylabel=m))
        paths.append(plots.against(si, {m: y}, os.path.join(exp_dir, "plots",
                                                             f"analysis_{m}_vs_si.png"),
                                   xlabel="mean SI", ylabel=m))
    if "mean_si" in cols and "selectivity" in analyses:
        paths.append(plots.against(alpha, {"mean SI": si}, os.path.join(
            exp_dir, "plots", "analysis_mean_si_vs_alpha.png"), xlabel="alpha",
            ylabel="mean SI"))
    print(f"wrote {os.path.join(exp_dir, 'analysis_results.csv')} and {len(paths)} analysis "
          f"plots in {os.path.join(exp_dir, 'plots')}", file=out)
    return {"rows": rows, "plots": [str(p) for p in paths]}


# --------------------------------------------------------------------------- the CLI

def _common(p: argparse.ArgumentParser, max_images: int | None) -> None:
    p.add_argument("path", help="a checkpoint (.pt), a run folder or a Tune experiment folder")
    p.add_argument("--split", default="test", choices=["val", "test"],
                   help="the data split, carved as in training (default: test)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="probe names, groups (all, blocks) or module paths (default: the "
                        "layers probed in training)")
    p.add_argument("--max-images", type=int, default=max_images,
                   help="use the first N images of the split (0: all; default: "
                        f"{max_images or 'all'})")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run>/analysis/<analysis>)")
    p.add_argument("--data-root", default=None,
                   help="read the dataset from here instead of the recipe's data.root")
    p.add_argument("--seed", type=int, default=0, help="seed for corruptions, PGD, orders")


def register(subparsers) -> None:
    a = subparsers.add_parser("analyze", help="analyse a trained checkpoint: selectivity, "
                              "ablation, orientation, robustness, dimensionality")
    asub = a.add_subparsers(dest="analysis", required=True)

    p = asub.add_parser("selectivity", help="exact SI per unit and layer, preferred classes")
    _common(p, None)

    p = asub.add_parser("ablation", help="single-unit (and cumulative) ablation, correlations "
                        "of the drops with SI, L1 norm and mean activation")
    _common(p, None)
    p.add_argument("--cumulative", action="store_true",
                   help="also cumulative ablation curves (SI high/low first, random)")
    p.add_argument("--n-random", type=int, default=5, help="random orders for --cumulative")

    p = asub.add_parser("orientation", help="OSI/gOSI on gratings, top/bottom-gOSI ablation, "
                        "shift invariance")
    _common(p, 1000)
    p.add_argument("--threshold", type=float, default=0.33,
                   help="gOSI above this counts as orientation selective (Ukita: 0.33)")
    p.add_argument("--shift", type=int, default=2, help="pixels for shift invariance")
    p.add_argument("--no-ablation", action="store_true",
                   help="gratings only: skip the gOSI-split ablation and shift invariance")

    p = asub.add_parser("robustness", help="accuracy under common corruptions and attacks")
    _common(p, 1000)
    p.add_argument("--corruptions", default="all", help="all, or comma-separated names")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--eps", default="0,0.001,0.002,0.004,0.008,0.016,0.031",
                   help="L-inf epsilons in pixel units (0-1), e.g. 0,1/255,8/255")
    p.add_argument("--attack", default="fgsm,pgd", help="fgsm, pgd or fgsm,pgd")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--step-size", type=float, default=None,
                   help="PGD step size (default 2.5 * eps / steps)")

    p = asub.add_parser("dimensionality", help="principal components for a share of the "
                        "variance, on clean, corrupted and adversarial inputs")
    _common(p, 1000)
    p.add_argument("--threshold", type=float, default=0.95, help="variance to explain")
    p.add_argument("--spatial", default="flatten", choices=["flatten", "mean"],
                   help="flatten: whole layer output; mean: spatial mean per unit")
    p.add_argument("--corruptions", default="all", help="all, or comma-separated names")
    p.add_argument("--severity", type=int, default=3, choices=[1, 2, 3, 4, 5])
    p.add_argument("--eps", default="0.031", help="one L-inf epsilon (pixel units)")
    p.add_argument("--attack", default="pgd", choices=["fgsm", "pgd"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-size", type=float, default=None)
    a.set_defaults(func=_analyze)
    for sp in asub.choices.values():
        sp.set_defaults(func=_analyze)
