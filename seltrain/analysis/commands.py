"""``seltrain analyze {selectivity,ablation,orientation,robustness,dimensionality,gradients,
rotation,pwcca} PATH``: the command line of the analyses; ``seltrain analyze layers``: a network's layers.

PATH is a checkpoint file, a run folder (its checkpoints/best.pt), a Tune experiment folder
(every trials/<trial>/ run folder's best checkpoint), a target folder (target.json: a network
seltrain did not train) or a folder of target folders. Instead of PATH, ``--model`` names a
network seltrain did not train (with ``--weights``, ``--data``, ...: ``TARGET_OPTIONS``,
seltrain/analysis/target_spec.py). Each analysis writes JSON, CSV and figure files (PNG; ``--format``) into
``<run>/analysis/<name>/`` (or ``--out``; with several runs, ``--out/<trial>/``) and prints a
short summary.

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


def run_analysis(name: str, path, opts: AnalysisOptions | None = None,
                 stream=None, target_dir: str | None = None) -> list[dict]:
    """Run analysis ``name`` with ``opts`` (default: its defaults) on every target under
    ``path`` (``target.find_targets``), or on the network a ``TargetSpec`` ``path`` names
    (its folder ``target_dir``, default runs/targets/<model>-<weights stem>); returns one
    summary per target (with ``run_dir``, ``out_dir`` and ``seconds``). One process, one
    target after another; ``seltrain.analysis.fanout`` runs the same on a Ray cluster."""
    from seltrain.analysis import outputs
    from seltrain.analysis.target import TargetRef, find_targets
    from seltrain.analysis.target_spec import TargetSpec

    stream = stream or sys.stdout
    module = analysis(name)
    opts = module.Options() if opts is None else opts
    if not isinstance(opts, module.Options):
        raise TypeError(f"{name} takes {module.Options.__name__}, not {type(opts).__name__}")
    skipped: list[tuple[str, str]] = []
    targets = [TargetRef(target_dir, spec=path)] if isinstance(path, TargetSpec) \
        else find_targets(path, skipped, opts.checkpoint)
    for run_dir, why in skipped:
        print(f"{name}: skipped {run_dir}: {why}", file=stream)
    if opts.out and len(targets) > 1:
        outputs.refuse_single_output(opts.out, opts.force)
    results = []
    for ref in targets:
        done = analyse_target(name, ref, opts, len(targets))
        for ln in done["lines"]:
            print(ln, file=stream)
        stream.flush()
        results.append(done["summary"])
    if opts.checkpoint == "kept" and not isinstance(path, TargetSpec):
        _over_epochs(name, results, opts, stream)
    if skipped:
        print(f"{name}: analysed {len(targets)} of {len(targets) + len(skipped)} run folders "
              f"of {path}; skipped {len(skipped)} without a checkpoint: "
              f"{', '.join(os.path.basename(r) for r, _ in skipped)}", file=stream, flush=True)
    return results


def _over_epochs(name: str, results: list[dict], opts: AnalysisOptions, stream) -> None:
    """``--checkpoint kept``: each run's results across its kept epochs
    (``over_epochs.write``), once every epoch is analysed."""
    from seltrain.analysis import outputs, over_epochs

    for run_dir in dict.fromkeys(r["run_dir"] for r in results):
        mine = [r for r in results if r["run_dir"] == run_dir]
        folder = outputs.over_epochs_folder(run_dir, opts, name)
        for ln in over_epochs.write(mine, folder, name):
            print(ln, file=stream)
    stream.flush()


def analyse_target(name: str, ref, opts: AnalysisOptions, n_targets: int = 1,
                   key: str | None = None, compute=None) -> dict:
    """Analysis ``name`` of one target (a ``TargetRef``), written into its output folder:
    what ``run_analysis`` does for each target, and what one fan-out task does on a Ray
    worker (seltrain.analysis.fanout). ``key``: the task key the folder's marker records
    (default: computed here); ``compute(target, opts)``: the numbers (default: the analysis'
    own ``compute``; the fan-out merges its chunks' results here). Returns {"summary": the
    analysis' summary with ``run_dir``, ``out_dir`` and ``seconds``, "lines": what the command
    prints}."""
    import torch

    from seltrain.analysis import outputs, plots, tb_views
    from seltrain.analysis.fanout import task_key

    module = analysis(name)
    t0 = time.perf_counter()
    target = ref.load(opts)
    folder = outputs.OutputFolder(target, opts, name, n_targets,
                                  key=key or task_key(name, ref, opts))
    with folder as staging:
        torch.manual_seed(opts.seed)
        result = (compute or module.compute)(target, opts)
        with plots.formats(opts.format):  # every figure in each --format
            lines = module.write(result, target, opts, staging)
        folder.headline = {k: result["summary"].get(k) for k in module.SWEEP_HEADLINE}
        folder.summary = result["summary"]
    # After the folder is in place: TensorBoard only ever shows numbers whose files exist.
    # Its results are kept whatever happens here, so a TensorBoard folder that cannot be
    # written (read-only, full) is a line of the output, not a failed analysis.
    try:
        tb, tb_failed = tb_views.write_headline(target, name, folder.headline), None
    except OSError as e:
        tb, tb_failed = None, f"  TensorBoard: not written ({e.strerror or e})"
    summary = dict(result["summary"], run_dir=target.run_dir, out_dir=folder.final,
                   seconds=time.perf_counter() - t0)
    what = f"{target.spec.model} ({target.ckpt_path})" if target.spec else target.ckpt_path
    head = (f"{name}: {what} ({target.split}, {target.data.num_images} images, "
            f"{target.device.type}, {summary['seconds']:.1f} s)")
    wrote = [f"  wrote {folder.final}"]
    if tb is not None:
        wrote.append(f"  wrote {tb_views.PREFIX}/{name}/* scalars into {tb}")
    if tb_failed:
        wrote.append(tb_failed)
    return {"summary": summary, "lines": [head, *lines, *wrote]}


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
        if spelling == "--format":
            raise ConfigError("--analysis-args: --format is the report's own option: give "
                              "seltrain report --format, which applies to every figure")
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

    from seltrain.analysis.fanout import fanout_from, run_fanout, this_command
    from seltrain.analysis.target_spec import TargetSpec

    opts = options_from(analysis(args.analysis).Options, args)
    what = target_from(args)
    fanout = fanout_from(args, force=opts.force)
    if fanout is not None:
        if isinstance(what, TargetSpec):
            raise ConfigError("--address analyses checkpoints, run folders, experiments or "
                              "target folders; a --model network runs in one process (drop "
                              "--address, or analyse its target folder)")
        results = run_fanout([what], {args.analysis: opts}, fanout, again=this_command())
        print(f"{args.analysis}: {len(results)} target(s): "
              f"{sum(r.status == 'done' for r in results)} analysed, "
              f"{sum(r.status == 'skipped' for r in results)} kept from before", flush=True)
        return 0
    try:
        run_analysis(args.analysis, what, opts, target_dir=getattr(args, "target_dir", None))
    except KeyboardInterrupt:
        raise Interrupted(f"stopped the {args.analysis} analysis; an output folder it had not "
                          "finished was left as it was (its new files are written to a "
                          "temporary folder, removed); run the command again") from None
    return 0


# --------------------------------------------------------------------------- any network

# The options that name a network seltrain did not train: (flag, metavar, help).
TARGET_OPTIONS = (
    ("--model", "NAME", "a network seltrain did not train, instead of PATH: torchvision:NAME "
     "(resnet18, resnet50, vgg16, vgg16_bn, alexnet, ...) or package.module:factory"),
    ("--weights", "FILE", "its weights: a state_dict .pth (or a checkpoint holding one), or "
     "a torchvision weights name (IMAGENET1K_V1), read from torch's hub cache, never "
     "downloaded (default: none, the network as initialised)"),
    ("--data", "DATASET[:DIR]", "the data: imagefolder:DIR, cifar10:DIR, cifar100:DIR, "
     "tinyimagenet:DIR, fashion_mnist[:DIR] or synthetic"),
    ("--image-size", "PX", "the image side the network sees (default: the weights' crop "
     "size, else the data's own)"),
    ("--mean", "M[,M,M]", "per-channel mean for the normalisation (default: ImageNet's for "
     "torchvision networks, else the data's)"),
    ("--std", "S[,S,S]", "per-channel std (default: as --mean)"),
    ("--class-map", "FILE", "JSON {data class: output index} (or a list of indices), for "
     "data with other classes than the network's outputs, e.g. a subset of ImageNet's"),
    ("--target-dir", "DIR", "the target's folder, for target.json and the results "
     "(default: runs/targets/<model>-<weights stem>)"),
)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a network seltrain did not train (instead of PATH)")
    for spelling, metavar, text in TARGET_OPTIONS:
        group.add_argument(spelling, metavar=metavar, help=text, default=None,
                           dest=spelling[2:].replace("-", "_"))


def target_from(args):
    """``args.path``, or the ``TargetSpec`` that ``--model`` and its options describe; a
    mix of the two, or neither, is one line."""
    from seltrain.analysis.options import numbers, whole_number
    from seltrain.analysis.target_spec import TargetSpec

    given = [s for s, _, _ in TARGET_OPTIONS
             if getattr(args, s[2:].replace("-", "_"), None) is not None]
    if args.model is None:
        if given:
            raise ConfigError(f"{given[0]} goes with --model (a network seltrain did not "
                              "train); a trained run's checkpoint names its own network and "
                              "data")
        if args.path is None:
            raise ConfigError("give PATH (a checkpoint, run folder, experiment or target "
                              "folder) or --model NAME with --data")
        return args.path
    if args.path is not None:
        raise ConfigError(f"give either PATH ({args.path}) or --model, not both; a target "
                          "folder is PATH alone")

    def parsed(flag, parse, value):
        if value is None:
            return None
        try:
            out = parse(value)
        except ValueError as e:
            raise ConfigError(f"{flag} {value}: {e}") from None
        return out

    size = parsed("--image-size", whole_number, args.image_size)
    if size is not None and size < 1:
        raise ConfigError(f"--image-size {size}: give a side in pixels >= 1")
    mean, std = (parsed(f, numbers, getattr(args, f[2:])) for f in ("--mean", "--std"))
    if (mean is None) != (std is None):
        raise ConfigError("give --mean and --std together (the normalisation is both)")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError(f"--std {args.std}: every value must be > 0")
    return TargetSpec(model=args.model, weights=args.weights, data=args.data, image_size=size,
                      mean=mean, std=std, class_map=args.class_map)


def _layers(args) -> int:
    """``seltrain analyze layers``: every layer of a network, where it is read and zeroed."""
    from seltrain.analysis.layer_listing import list_layers

    print(list_layers(target_from(args)), end="")
    return 0


def register(subparsers) -> None:
    from seltrain.analysis.fanout import add_fanout_options

    a = subparsers.add_parser("analyze", help="analyse a network: "
                              f"{', '.join(NAMES)}; layers lists a network's layers")
    asub = a.add_subparsers(dest="analysis", required=True)
    for name, module in ANALYSES.items():
        cls = module.Options
        p = asub.add_parser(name, help=" ".join(cls.__doc__.split()))
        p.add_argument("path", nargs="?", help="a checkpoint (.pt), a run folder, a Tune "
                       "experiment folder, a target folder or a folder of target folders")
        add_options(p, cls)
        add_target_options(p)
        add_fanout_options(p)
        # SIGTERM (a scheduler's stop) as Ctrl-C: finished outputs kept, exit 143.
        p.set_defaults(func=_analyze, sigterm_as_interrupt=True)
    p = asub.add_parser("layers", help="every layer of a network that can be probed: its "
                        "units, where a unit is read and where it is zeroed, from its graph")
    p.add_argument("path", nargs="?", help="a checkpoint, run folder or target folder")
    add_target_options(p)
    p.set_defaults(func=_layers)
