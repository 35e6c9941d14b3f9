"""``seltrain analyze {selectivity,ablation,orientation,robustness,dimensionality,gradients}
PATH``: the command line of the analyses.

PATH is a checkpoint file, a run folder (its checkpoints/best.pt) or a Tune experiment folder
(every trials/<trial>/ run folder's best checkpoint). Each analysis writes JSON, CSV and PNG
files into ``<run>/analysis/<name>/`` (or ``--out``; with several runs, ``--out/<trial>/``)
and prints a short summary.

This module only turns argv into an analysis' options and dispatches. Each analysis is a
module found by name in ``registry.ANALYSES``, holding its ``Options``, ``compute`` and
``write``: ``run_analysis`` loads each checkpoint (``target.load_target``), runs the
analysis' ``compute`` and its ``write`` into the output folder (``outputs.OutputFolder``,
written as one unit). ``sweep_options`` reads ``seltrain report --analysis-args`` into the
options of several analyses at once, strictly.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields

from seltrain.analysis.options import AnalysisOptions, default_shown, flag, flags
from seltrain.analysis.registry import ANALYSES, NAMES, analysis
from seltrain.errors import ConfigError, did_you_mean


def run_analysis(name: str, path: str, opts: AnalysisOptions | None = None,
                 stream=None) -> list[dict]:
    """Run analysis ``name`` with ``opts`` (default: its defaults) on every checkpoint under
    ``path``; returns one summary per run (with ``run_dir``, ``out_dir`` and ``seconds``)."""
    import torch

    from seltrain.analysis import outputs
    from seltrain.analysis.target import load_target
    from seltrain.checkpoint import find_checkpoints

    stream = stream or sys.stdout
    module = analysis(name)
    opts = module.Options() if opts is None else opts
    if not isinstance(opts, module.Options):
        raise TypeError(f"{name} takes {module.Options.__name__}, not {type(opts).__name__}")
    skipped: list[tuple[str, str]] = []
    targets = find_checkpoints(path, skipped)
    for run_dir, why in skipped:
        print(f"{name}: skipped {run_dir}: {why}", file=stream)
    if opts.out and len(targets) > 1:
        outputs.refuse_single_output(opts.out, opts.force)
    results = []
    for run_dir, ckpt in targets:
        t0 = time.perf_counter()
        target = load_target(run_dir, ckpt, opts)
        folder = outputs.OutputFolder(target, opts, name, len(targets))
        with folder as staging:
            torch.manual_seed(opts.seed)
            result = module.compute(target, opts)
            lines = module.write(result, target, opts, staging)
        out = folder.final
        summary = dict(result["summary"], run_dir=run_dir, out_dir=out,
                       seconds=time.perf_counter() - t0)
        results.append(summary)
        print(f"{name}: {ckpt} ({target.split}, {target.data.num_images} images, "
              f"{target.device.type}, {summary['seconds']:.1f} s)", file=stream)
        for ln in lines:
            print(ln, file=stream)
        print(f"  wrote {out}", file=stream, flush=True)
    if skipped:
        print(f"{name}: analysed {len(targets)} of {len(targets) + len(skipped)} run folders "
              f"of {path}; skipped {len(skipped)} without a checkpoint: "
              f"{', '.join(os.path.basename(r) for r, _ in skipped)}", file=stream, flush=True)
    return results


# --------------------------------------------------------------------------- argv -> options

def add_options(parser: argparse.ArgumentParser, cls: type[AnalysisOptions]) -> None:
    """One argparse option per field of ``cls``. argparse only collects the text (defaults
    are left out of the namespace): parsing and checking it is the options' own job."""
    for f in fields(cls):
        meta = f.metadata
        shown = default_shown(f)
        kw = dict(dest=f.name, default=argparse.SUPPRESS,
                  help=meta["help"] + (f" (default: {shown})" if shown else ""))
        if isinstance(f.default, bool):
            kw["action"] = "store_true"
        else:
            kw["nargs"] = meta["nargs"]
            kw["metavar"] = meta["metavar"] or (
                "{" + ",".join(map(str, meta["choices"])) + "}" if meta["choices"] else None)
        parser.add_argument(flag(f.name), *meta["aliases"], **kw)


def options_from(cls: type[AnalysisOptions], args: argparse.Namespace) -> AnalysisOptions:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


class _SweepParser(argparse.ArgumentParser):
    """argparse whose mistakes are a ConfigError (one line, exit 2)."""

    def error(self, message):
        raise ConfigError(f"--analysis-args: {message}")


def _option_groups(argv: list[str]) -> list[tuple[str, list[str]]]:
    """[(option spelling, its tokens)] in order; a value belongs to the option before it."""
    groups: list[tuple[str, list[str]]] = []
    for tok in argv:
        is_option = tok.startswith("-") and not tok[1:2].isdigit() and tok[1:2] != "."
        if is_option:
            groups.append((tok.split("=", 1)[0], [tok]))
        elif groups:
            groups[-1][1].append(tok)
        else:
            raise ConfigError(f"--analysis-args: '{tok}' is not an option; give options such "
                              "as --max-images 500")
    return groups


def sweep_options(names: list[str], argv: list[str]) -> dict[str, AnalysisOptions]:
    """The options of each analysis in ``names`` from one list of options (``seltrain report
    --analysis-args``). Each analysis takes the options it has; an option that none of them
    has, one spelling that sets different options in two of them (``--threshold`` with both
    orientation and dimensionality), ``--out`` (each trial writes into its own run folder),
    or a bad value is a one-line ConfigError, before anything runs."""
    options = {n: analysis(n).Options for n in names}
    spellings = {n: flags(cls) for n, cls in options.items()}
    known = sorted(set().union(*spellings.values()))
    groups = _option_groups(argv)
    for spelling, _ in groups:
        if spelling == "--out":
            raise ConfigError("--analysis-args: --out does not apply to a sweep: each trial's "
                              "results go to its own <trial>/analysis/<analysis>/")
        if spelling not in known:
            raise ConfigError(f"--analysis-args: no chosen analysis ({', '.join(names)}) takes "
                              f"{spelling}{did_you_mean(spelling, known)}")
        meant = sorted({spellings[n][spelling] for n in names if spelling in spellings[n]})
        if len(meant) > 1:
            raise ConfigError(f"--analysis-args: {spelling} is ambiguous with "
                              f"{', '.join(names)}; use {' or '.join(map(flag, meant))}")
    chosen = {}
    for n in names:
        parser = _SweepParser(prog=f"seltrain report --analysis-args ({n})", add_help=False,
                              allow_abbrev=False)
        add_options(parser, options[n])
        mine = [tok for spelling, toks in groups if spelling in spellings[n] for tok in toks]
        try:
            chosen[n] = options_from(options[n], parser.parse_args(mine))
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith("--analysis-args")
                              else f"--analysis-args ({n}): {e}") from None
    return chosen


# --------------------------------------------------------------------------- the CLI

def _analyze(args) -> int:
    from seltrain.errors import Interrupted

    opts = options_from(analysis(args.analysis).Options, args)
    try:
        run_analysis(args.analysis, args.path, opts)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped the {args.analysis} analysis; an output folder it had not "
                          "finished was left as it was (its new files are written to a "
                          "temporary folder, removed); run the command again") from None
    return 0


def register(subparsers) -> None:
    a = subparsers.add_parser("analyze", help="analyse a trained checkpoint: "
                              f"{', '.join(NAMES)}")
    asub = a.add_subparsers(dest="analysis", required=True)
    for name, module in ANALYSES.items():
        cls = module.Options
        p = asub.add_parser(name, help=" ".join(cls.__doc__.split()))
        p.add_argument("path", help="a checkpoint (.pt), a run folder or a Tune experiment "
                       "folder")
        add_options(p, cls)
        p.set_defaults(func=_analyze)
