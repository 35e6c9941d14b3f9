"""The ``seltrain`` command line.

    seltrain train CONFIG [key.sub=value ...] [--resume]
    seltrain config show CONFIG [key.sub=value ...]

Every user mistake ends as one line on stderr and a non-zero exit (2 for config errors); the
full traceback is kept for real bugs, or shown for anything with SELTRAIN_DEBUG=1.
"""
from __future__ import annotations

import argparse
import os
import sys


def _train(args) -> int:
    from seltrain import distributed
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    local = args.local_rank if args.local_rank is not None else args.local_rank_sub
    ctx = distributed.setup(local_rank=local)
    try:
        print(ctx.describe(), flush=True)
        summary = Trainer(cfg, ctx, resume=args.resume).fit()
        if ctx.is_main:
            print(f"done: best epoch {summary['best_epoch'] + 1}, val_acc {summary['val_acc']}, "
                  f"test_acc {summary['test_acc']:.4f}, test_si {summary['test_si']:.4f}; "
                  f"run folder {summary['run_dir']}", flush=True)
    finally:
        distributed.teardown(ctx)
    return 0


def _config_show(args) -> int:
    from seltrain.config import load_config

    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(cfg.to_yaml())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seltrain", description="Train and analyse CNNs with the "
                                "class-selectivity regularizer (loss = CE - alpha * mean SI).")
    # The deepspeed launcher passes --local_rank=N ahead of the subcommand (unless told
    # --no_local_rank); the rank itself is read from the environment.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run from a recipe")
    t.add_argument("config", help="a recipe YAML, e.g. configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    t.add_argument("--resume", action="store_true",
                   help="continue the run from its checkpoints/last.pt when there is one")
    # The deepspeed launcher appends --local_rank=N; the rank comes from the environment.
    t.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   dest="local_rank_sub", help=argparse.SUPPRESS)
    t.set_defaults(func=_train)

    c = sub.add_parser("config", help="inspect recipes")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved recipe")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=_config_show)

    for register in _extensions():
        register(sub)
    return p


def _extensions():
    """Subcommands that live beside their subsystem (data, tune, analyze, report)."""
    regs = []
    for mod in ("seltrain.data.commands", "seltrain.tuning", "seltrain.analysis.commands"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        regs.append(m.register)
    return regs


def main(argv: list[str] | None = None) -> int:
    from seltrain.errors import SeltrainError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except SeltrainError as e:
        if os.environ.get("SELTRAIN_DEBUG"):
            raise
        print(f"seltrain: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("seltrain: interrupted; the last checkpoint is kept, continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
