"""The sweep's figures (after Leavitt & Morcos 2021, figs. 2-4): accuracy and SI against alpha.

``plot_sweep(trials, by_alpha, out_dir)`` writes three PNGs and returns their paths;
``to_tensorboard(paths, logdir)`` puts the same PNGs into TensorBoard's Images tab.
alpha spans both signs over four decades, so the x axis is symlog (linear within |alpha| < 0.1).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

LINTHRESH = 0.1


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    return plt, fig, ax


def _alpha_axis(ax, alphas) -> None:
    ax.set_xscale("symlog", linthresh=LINTHRESH)
    ax.set_xlabel("alpha (loss = CE - alpha * mean SI)")
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.grid(alpha=0.3)


def _trial_points(ax, trials, col: str) -> None:
    """Each trial: filled if it ran to the end, hollow if ASHA stopped it (not in the means)."""
    done = trials["complete"].astype(bool)
    ax.scatter(trials["alpha"][done], trials[col][done], s=10, color="0.55", label="trials")
    if (~done).any():
        ax.scatter(trials["alpha"][~done], trials[col][~done], s=14, facecolors="none",
                   edgecolors="0.55", label="stopped early")


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(trials, by_alpha, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    a = by_alpha["alpha"].to_numpy(float)
    std = lambda c: np.nan_to_num(by_alpha[c].to_numpy(float))  # noqa: E731 - one seed: no bar
    # One trial per alpha has no spread to draw: say so instead of promising error bars.
    label = "mean +- std over seeds" if (by_alpha["n"] > 1).any() else "one seed per alpha"
    paths = []

    plt, fig, ax = _axes()
    _trial_points(ax, trials, "test_acc")
    ax.errorbar(a, by_alpha["test_acc_mean"], yerr=std("test_acc_std"), fmt="o-", capsize=3,
                label=label)
    _alpha_axis(ax, a)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy against alpha")
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, os.path.join(out_dir, "test_acc_vs_alpha.png")))

    plt, fig, ax = _axes()
    _trial_points(ax, trials, "test_si")
    ax.errorbar(a, by_alpha["test_si_mean"], yerr=std("test_si_std"), fmt="o-", capsize=3,
                color="C1", label=label)
    _alpha_axis(ax, a)
    ax.set_ylabel("mean class selectivity (test)")
    ax.set_title("Mean SI against alpha")
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, os.path.join(out_dir, "si_vs_alpha.png")))

    plt, fig, ax = _axes()
    sc = ax.scatter(trials["test_si"], trials["test_acc"], c=np.arcsinh(trials["alpha"] /
                    LINTHRESH), cmap="coolwarm", s=14)
    ax.errorbar(by_alpha["test_si_mean"], by_alpha["test_acc_mean"], xerr=std("test_si_std"),
                yerr=std("test_acc_std"), fmt="none", ecolor="0.3", capsize=2)
    for x, y, al in zip(by_alpha["test_si_mean"], by_alpha["test_acc_mean"], a):
        ax.annotate(f"{al:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    cb = fig.colorbar(sc, ax=ax)
    # Colour is asinh(alpha / 0.1) (symlog-like, both signs); ticks read as alpha itself.
    ticks = sorted(set(trials["alpha"].tolist()))
    cb.set_ticks(np.arcsinh(np.asarray(ticks, float) / LINTHRESH))
    cb.set_ticklabels([f"{t:g}" for t in ticks])
    cb.set_label("alpha")
    ax.set_xlabel("mean class selectivity (test)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against selectivity")
    ax.grid(alpha=0.3)
    paths.append(_save(plt, fig, os.path.join(out_dir, "acc_vs_si.png")))
    return paths


def to_tensorboard(paths: list[str], logdir: str) -> None:
    """Rewrite logdir with one image per figure (a fresh folder: reports never stack up)."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(logdir, ignore_errors=True)
    w = SummaryWriter(logdir)
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        w.add_image(f"sweep/{os.path.splitext(os.path.basename(p))[0]}", img, 0,
                    dataformats="HWC")
    w.close()
