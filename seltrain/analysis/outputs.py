"""What each analysis leaves on disk and prints: the write halves of ``seltrain analyze``.

``write(name, result, target, opts, out)`` takes what an analysis' ``compute`` returned and
writes its JSON (``serialize.write_json``), CSV (``serialize.write_csv``) and PNG
(``plots``) files into the folder ``out`` (``output_folder``); it returns the short summary
the command prints. Nothing here computes a number the files do not already hold.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from seltrain.analysis import plots
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.errors import ConfigError, file_in_the_way


MARKER = ".seltrain-analysis.json"


class OutputFolder:
    """Where one analysis of one checkpoint writes, as one unit.

    ``with OutputFolder(target, opts, name, n_targets) as staging:`` the analysis writes into
    ``staging`` (a hidden temporary folder beside the destination); when the block ends
    without an error, the temporary folder is renamed into place, replacing what the
    destination held, whole; on an error it is removed and the destination is untouched.
    For its whole life the destination is locked (``seltrain.runlock``, a lock file beside
    it, as run folders are locked), so two analyses into one folder never mix their files.

    The destination is ``--out`` (``--out/<run>`` with several runs) or
    ``<run>/analysis/<name>``. A non-empty ``--out`` that holds something else than this
    analysis of this checkpoint (another run's results, any other files) is refused unless
    ``--force``; a marker file (``MARKER``) tells which analysis and checkpoint a folder holds.
    """

    def __init__(self, target, opts, name: str, n_targets: int):
        self.name, self.ckpt = name, os.path.abspath(target.ckpt_path)
        out = opts.out
        if out:
            self.final = os.path.abspath(os.path.join(out, target.name) if n_targets > 1 else out)
        else:
            self.final = os.path.abspath(os.path.join(target.run_dir, "analysis", name))
        self.chosen, self.force = bool(out), bool(getattr(opts, "force", False))
        self.parent, base = os.path.dirname(self.final), os.path.basename(self.final)
        self.staging = os.path.join(self.parent, f".{base}.tmp-{os.getpid()}")
        self.lock_path = os.path.join(self.parent, f".{base}.lock")
        self.lock = None

    def __enter__(self) -> str:
        from seltrain.runlock import RunLock

        self._make_parent()
        self.lock = RunLock(self.lock_path, what=f"analysis output folder {self.final}",
                            fix="wait for that analysis to end, or choose another --out")
        self.lock.acquire()
        try:
            self._refuse_foreign()
            # Under the lock no other writer of this folder is alive: what is left from an
            # earlier one (killed mid-write) is garbage.
            base = os.path.basename(self.final)
            for entry in os.listdir(self.parent):
                if entry.startswith((f".{base}.tmp-", f".{base}.old-")):
                    shutil.rmtree(os.path.join(self.parent, entry), ignore_errors=True)
            os.makedirs(self.staging)
        except BaseException:
            self.lock.release()
            raise
        return self.staging

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self._commit()
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self.lock.release()

    def _make_parent(self) -> None:
        if os.path.isfile(self.final):
            raise ConfigError(f"cannot write the {self.name} results to {self.final}: it is a "
                              "file, not a folder; pass --out with a folder")
        blocker = file_in_the_way(self.parent)
        try:
            if blocker:
                raise NotADirectoryError(f"{blocker} is a file, not a folder")
            os.makedirs(self.parent, exist_ok=True)
        except OSError as e:
            why = f"{blocker} is a file, not a folder" if blocker else e.strerror
            raise ConfigError(f"cannot write the {self.name} results to {self.final}: {why}; "
                              "pass --out with a folder you can write") from None

    def _refuse_foreign(self) -> None:
        if not self.chosen or self.force or not os.path.isdir(self.final):
            return
        entries = sorted(os.listdir(self.final))
        if not entries:
            return
        marker = _read_marker(self.final)
        if marker == {"analysis": self.name, "checkpoint": self.ckpt}:
            return  # this analysis of this checkpoint again: replaced as the default folder is
        held = (f"the {marker.get('analysis')} results of {marker.get('checkpoint')}"
                if marker else f"{len(entries)} other file(s) ({', '.join(entries[:3])}"
                               f"{', ...' if len(entries) > 3 else ''})")
        raise ConfigError(f"--out {self.final} already holds {held}; pass --force to replace "
                          "that folder whole, or choose another --out")

    def _commit(self) -> None:
        with open(os.path.join(self.staging, MARKER), "w") as f:
            json.dump({"analysis": self.name, "checkpoint": self.ckpt}, f)
        old = None
        if os.path.lexists(self.final):
            old = os.path.join(self.parent, f".{os.path.basename(self.final)}.old-{os.getpid()}")
            os.rename(self.final, old)
        os.rename(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)


def refuse_single_output(out: str, force: bool) -> None:
    """With several runs each goes to ``--out/<run>``: an ``--out`` that holds one analysis'
    own results (a marker) is another run's output, refused unless ``--force``, which clears
    it first."""
    marker = _read_marker(out) if os.path.isdir(out) else {}
    if not marker:
        return
    if not force:
        raise ConfigError(f"--out {os.path.abspath(out)} already holds the "
                          f"{marker.get('analysis')} results of {marker.get('checkpoint')}; "
                          "pass --force to replace that folder whole, or choose another --out")
    shutil.rmtree(out)


def _read_marker(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
        return marker if isinstance(marker, dict) else {}
    except (OSError, ValueError):
        return {}


def write_selectivity(r: dict, target, opts, out: str) -> list[str]:
    s = r["summary"]
    write_json(os.path.join(out, "selectivity.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "n_images": r["n_images"],
        "mean_si": s["mean_si"], "si_per_layer": s["si_per_layer"], "si": r["si"],
        "preferred_class": r["preferred_class"],
        "class_means": {n: m.T for n, m in r["class_means"].items()}})
    for n, v in r["si"].items():
        write_csv(os.path.join(out, f"units_{n}.csv"),
                  {"unit": range(len(v)), "si": v, "preferred_class": r["preferred_class"][n]})
    plots.histograms(r["si"], os.path.join(out, "si_hist.png"), xlabel="SI",
                     value_range=(0, 1), title=f"class selectivity ({target.split})")
    plots.layer_means(r["si"], os.path.join(out, "si_per_layer.png"), ylabel="mean SI")
    return [f"mean SI {s['mean_si']:.4f} over {len(s['si_per_layer'])} layers "
            f"({r['n_images']} {target.split} images)",
            *(f"  {n:<24} {v:.4f}" for n, v in s["si_per_layer"].items())]


def write_ablation(r: dict, target, opts, out: str) -> list[str]:
    lines = [f"single-unit ablation, {len(target.layers)} layers, {target.data.num_images} "
             f"{target.split} images"]
    for name, layer in r["layers"].items():
        res, attrs, si = layer["single_unit"], layer["attributes"], layer["si"]
        corr = layer["correlations"]
        write_csv(os.path.join(out, f"units_{name}.csv"), {
            "unit": range(len(si)), "si": si, "preferred_class": attrs["preferred_class"],
            "l1_norm": attrs["l1_norm"], "l1_norm_raw": attrs["l1_norm_raw"],
            "mean_activation": attrs["mean_activation"], "overall_drop": res["overall_drop"],
            "max_class_drop": res["max_class_drop"], "class_drop_std": res["class_drop_std"],
            "preferred_class_drop": layer["preferred_class_drop"]})
        drops = res["class_drops"]
        write_csv(os.path.join(out, f"class_drops_{name}.csv"),
                  {"unit": range(len(si)),
                   **{f"class_{c}": drops[:, c] for c in range(drops.shape[1])}})
        for drop, ylabel in (("max_class_drop", "max class drop"),
                             ("overall_drop", "overall accuracy drop")):
            plots.drop_scatter(si, res[drop], os.path.join(out, f"si_vs_{drop}_{name}.png"),
                               ylabel=ylabel, rho=corr[drop]["si"]["rho"], title=name)
        if "cumulative" in layer:
            plots.cumulative_ablation(layer["cumulative"],
                                      os.path.join(out, f"cumulative_{name}.png"))
        write_json(os.path.join(out, f"ablation_{name}.json"), layer)
        s = r["summary"]["layers"][name]
        lines.append(f"  {name:<24} baseline {s['baseline_acc']:.4f}  mean drop "
                     f"{s['mean_overall_drop']:+.4f}  max class drop (mean) "
                     f"{s['mean_max_class_drop']:.4f}  rho(SI, max class drop) "
                     f"{s['rho_si_max_class_drop']:.3f} (p {s['p_si_max_class_drop']:.2g})")
    write_json(os.path.join(out, "summary.json"), r["summary"])
    return lines


def write_orientation(r: dict, target, opts, out: str) -> list[str]:
    res, summary = r["orientation"], r["summary"]
    layers, params, threshold = res["layers"], res["grating_parameters"], res["threshold"]
    angles = params["orientations_deg"]
    for name, L in layers.items():
        write_csv(os.path.join(out, f"units_{name}.csv"),
                  {"unit": range(len(L["osi"])), "osi": L["osi"], "gosi": L["gosi"],
                   "null_osi": L["null_osi"][0], "null_gosi": L["null_gosi"][0],
                   "preferred_orientation_deg": L["preferred_orientation_deg"],
                   "best_period_px": params["periods_px"][L["best_frequency"]],
                   "orientation_range_deg": L["orientation_range_deg"]})
        plots.tuning_curves(L["tuning_curves"], os.path.join(out, f"tuning_{name}.png"),
                            orientations_deg=angles, title=name)
    osis = {n: L["osi"] for n, L in layers.items()}
    gosis = {n: L["gosi"] for n, L in layers.items()}
    plots.orientation_distributions(osis, gosis, os.path.join(out, "osi_gosi.png"),
                                    threshold=threshold)
    plots.null_distributions(osis, gosis, {n: L["null_osi"] for n, L in layers.items()},
                             {n: L["null_gosi"] for n, L in layers.items()},
                             os.path.join(out, "osi_gosi_vs_permuted.png"))
    plots.orientation_ranges({n: L["orientation_range_deg"] for n, L in layers.items()}, gosis,
                             os.path.join(out, "orientation_range.png"), threshold=threshold)
    plots.layer_means(gosis, os.path.join(out, "gosi_per_layer.png"), ylabel="mean gOSI")
    if res["gosi_split_ablation"]:
        plots.gosi_split_ablation(res["gosi_split_ablation"],
                                  os.path.join(out, "gosi_split_ablation.png"))
    write_json(os.path.join(out, "orientation.json"), res)
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"orientation selectivity (gOSI > {threshold:g}: "
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
    return lines


def write_robustness(r: dict, target, opts, out: str) -> list[str]:
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


def write_dimensionality(r: dict, target, opts, out: str) -> list[str]:
    res, summary = r["dimensionality"], r["summary"]
    rep, change, inc = res["representation"], res["change"], res["increase"]
    layers, share, early = target.layers, res["threshold"], res["early_layers"]
    write_json(os.path.join(out, "dimensionality.json"), res)
    rows = [(reading, cond, n, per_layer[n])
            for reading, conds in (("representation", rep), ("change", change))
            for cond, per_layer in conds.items() for n in layers]
    write_csv(os.path.join(out, "dimensionality.csv"), {
        "reading": [r[0] for r in rows], "condition": [r[1] for r in rows],
        "layer": [r[2] for r in rows], "n_components": [r[3]["n_components"] for r in rows],
        "increase_over_clean": [inc[c][n] if reading == "representation" and c != "clean"
                                else np.nan for reading, c, n, _ in rows],
        "n_features": [r[3]["n_features"] for r in rows],
        "n_samples": [r[3]["n_samples"] for r in rows],
        "threshold": [share] * len(rows)})
    plots.dimensionality_readings({"representation": rep, "change": change, "increase": inc},
                                  os.path.join(out, "dimensionality.png"),
                                  title=f"components for {share:.0%} of the variance")
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = rep["clean"][layers[0]]["n_samples"]
    lines = [f"principal components for {share:.0%} of the variance ({n_img} images; "
             f"corrupted: mean of {len(res['corruptions'])} at severity "
             f"{res['corruption_severity']}; adversarial: {res['attack']} eps {res['eps']:g})",
             f"  {'layer':<24} {'representation clean/corrupted/adversarial':>44}   "
             f"{'change corrupted/adversarial':>28}"]
    lines += [f"  {n:<24} {rep['clean'][n]['n_components']:>14} / "
              f"{rep['corrupted'][n]['n_components']:>9.1f} / "
              f"{rep['adversarial'][n]['n_components']:>13}   "
              f"{change['corrupted'][n]['n_components']:>15.1f} / "
              f"{change['adversarial'][n]['n_components']:>10}" for n in layers]
    lines.append(f"  early layers ({', '.join(early)}): increase over clean corrupted "
                 f"{summary['early_increase_corrupted']:+.1f}, adversarial "
                 f"{summary['early_increase_adversarial']:+.1f}; change corrupted "
                 f"{summary['early_change_components_corrupted']:.1f}, adversarial "
                 f"{summary['early_change_components_adversarial']:.1f}")
    return lines


def write_gradients(r: dict, target, opts, out: str) -> list[str]:
    from seltrain.analysis.gradients import STATISTICS

    res, summary = r["layers"], r["summary"]
    means = summary["layers"]
    write_json(os.path.join(out, "gradients.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "wrt": opts.wrt,
        "activation": "spatial mean of the post-ReLU map (probes.unit_activation)",
        "statistics": STATISTICS, "statistic_status": "unconfirmed: seltrain's choice, "
        "the paper's definition is not public", "batch_size": opts.batch_size,
        "unit_block": opts.unit_block, "max_units": opts.max_units, "layers": res})
    for n, g in res.items():
        a, b = g["across_samples"], g["across_units"]
        write_csv(os.path.join(out, f"units_{n}.csv"), {
            "unit": g["units"], "direction": a["direction"], "norm_cv": a["norm_cv"],
            "zero_fraction": a["zero_fraction"], "mean_norm": a["mean_norm"]})
        write_csv(os.path.join(out, f"samples_{n}.csv"), {
            "sample": range(g["n_samples"]), "label": g["labels"],
            "direction": b["direction"], "norm_cv": b["norm_cv"],
            "zero_fraction": b["zero_fraction"], "mean_norm": b["mean_norm"]})
    plots.gradient_variability(means, os.path.join(out, "gradient_variability.png"),
                               title=f"input-gradient variability ({opts.wrt})")
    plots.histograms({n: g["across_samples"]["direction"] for n, g in res.items()},
                     os.path.join(out, "across_samples_direction_hist.png"),
                     xlabel="1 - mean pairwise cosine", title="per unit, across images")
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = next(iter(res.values()))["n_samples"]
    lines = [f"input-gradient variability ({n_img} images, gradients w.r.t. {opts.wrt}): "
             "direction = 1 - mean pairwise cosine, CV = std/mean of the gradient norm",
             f"  {'layer':<24} {'across images: direction   CV':>32}   "
             f"{'across units: direction   CV':>30}   silent"]
    lines += [f"  {n:<24} {m['across_samples_direction']:>23.3f} "
              f"{m['across_samples_norm_cv']:>6.2f}   {m['across_units_direction']:>23.3f} "
              f"{m['across_units_norm_cv']:>6.2f}   {m['across_samples_zero_fraction']:>6.1%}"
              for n, m in means.items()]
    return lines


WRITERS = {"selectivity": write_selectivity, "ablation": write_ablation,
           "orientation": write_orientation, "robustness": write_robustness,
           "dimensionality": write_dimensionality, "gradients": write_gradients}


def write(name: str, result: dict, target, opts, out: str) -> list[str]:
    """Write analysis ``name``'s ``result`` into ``out``; the lines to print."""
    return WRITERS[name](result, target, opts, out)
