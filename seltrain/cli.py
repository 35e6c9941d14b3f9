"""The ``seltrain`` command line.

    seltrain train CONFIG [key.sub=value ...] [--resume]
    seltrain config show CONFIG [key.sub=value ...]
    seltrain --version

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
    from seltrain.errors import Interrupted, PeerLost, one_line, without_source_location
    from seltrain.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    local = args.local_rank if args.local_rank is not None else args.local_rank_sub
    try:
        ctx = distributed.setup(local_rank=local)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while joining the process group; nothing was "
                          "written") from None
    last = os.path.join(cfg.run_dir(), "checkpoints", "last.pt")
    try:
        print(ctx.describe(), flush=True)
        summary = Trainer(cfg, ctx, resume=args.resume).fit()
        if ctx.is_main:
            num = {k: "-" if summary[k] is None else f"{summary[k]:.4f}"
                   for k in ("val_acc", "test_acc", "test_si")}  # None: split or SI not read
            print(f"done: best epoch {summary['best_epoch'] + 1}, val_acc {num['val_acc']}, "
                  f"test_acc {num['test_acc']}, test_si {num['test_si']}; "
                  f"run folder {summary['run_dir']}", flush=True)
    except RuntimeError as e:
        # Another rank died (SIGKILL, OOM, a lost node): this rank's next collective fails
        # with a transport error. The launcher ends the job; say so in one line, not a trace.
        if not (ctx.distributed and distributed.is_peer_failure(e)):
            raise
        kept = f"the last checkpoint is kept ({last})" if os.path.isfile(last) else \
            "no checkpoint was written yet"
        # gloo prefixes its source location: "[.../pair.cc:545] Read error ...: Connection
        # reset by peer. This is typically caused by ..." -> "Read error ...: Connection ..."
        why = without_source_location(one_line(e)).split(". ")[0][:160]
        raise PeerLost(f"rank {ctx.rank} lost contact with another rank ({why}); "
                       f"{kept}; rerun the same command with --resume (torchrun "
                       "--max-restarts does it by itself)") from None
    except KeyboardInterrupt:
        if os.path.isfile(last):
            raise Interrupted(f"the last checkpoint is kept ({last}); continue with the same "
                              "command plus --resume") from None
        raise Interrupted("stopped before the first checkpoint was written, so there is "
                          "nothing to resume; run the same command again") from None
    finally:
        distributed.teardown(ctx)
    return 0


def _config_show(args) -> int:
    from seltrain.config import load_config

    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(cfg.to_yaml())
    return 0


def version() -> str:
    """The installed seltrain's version, from its package metadata (pyproject.toml's
    ``version`` at install time); a source tree used without installing falls back to
    ``seltrain.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("seltrain")
    except metadata.PackageNotFoundError:
        from seltrain import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``; the metadata lookup (~30 ms) runs only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print seltrain's version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(f"seltrain {version()}\n")  # stdout, as argparse's own "version"
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (stock argparse prints the usage first), no
    abbreviated options, and a did-you-mean for an unknown one.

    Abbreviations are off in every (sub)command: argparse would take ``--data DIR`` as
    ``--data-root DIR`` without a word, and an option added later could change what an old
    abbreviation means."""

    # The (sub)parser that parsed last: the innermost one, whose options an unknown option
    # was meant for.
    innermost: "_Parser | None" = None

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        type(self).innermost = self
        return super().parse_known_args(args, namespace)

    def error(self, message):
        hint = ""
        if message.startswith("unrecognized arguments:"):
            from seltrain.errors import did_you_mean

            unknown = next((a.split("=", 1)[0] for a in message.split(":", 1)[1].split()
                            if a.startswith("--")), None)
            inner = type(self).innermost or self
            if unknown:
                hint = did_you_mean(unknown, [o for o in inner._option_string_actions
                                              if o.startswith("--")])
        self.exit(2, f"seltrain: error: {message}{hint} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="seltrain", description="Train and analyse CNNs with the "
                                "class-selectivity regularizer (loss = CE - alpha * mean SI).")
    # The deepspeed launcher passes --local_rank=N ahead of the subcommand (unless told
    # --no_local_rank); the rank itself is read from the environment.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run from a recipe")
    t.add_argument("config", help="a recipe YAML, e.g. configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    t.add_argument("--resume", action="store_true",
                   help="continue the run from its checkpoints/last.pt when there is one")
    # The deepspeed launcher appends --local_rank=N; the rank comes from the environment.
    t.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   dest="local_rank_sub", help=argparse.SUPPRESS)
    t.set_defaults(func=_train, sigterm_as_interrupt=True)

    c = sub.add_parser("config", help="inspect recipes")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser(
        "show", help="print the resolved recipe",
        description="Print the recipe as `seltrain train` would run it: every key, defaults "
                    "filled in and overrides applied, checked the same way (an unknown key or "
                    "a bad value is the same one-line error).")
    show.add_argument("config", help="a recipe YAML, e.g. configs/quickstart.yaml")
    show.add_argument("overrides", nargs="*", metavar="key.sub=value",
                      help="overrides, applied in order after the file, as `seltrain train` "
                           "takes them (e.g. train.lr=0.05 selectivity.alpha=-1)")
    show.set_defaults(func=_config_show)

    for register in _extensions():
        register(sub)
    return p


def _extensions():
    """Subcommands that live beside their subsystem (data, tune, analyze, report)."""
    regs = []
    for mod in ("seltrain.data.commands", "seltrain.tuning", "seltrain.report",
                "seltrain.analysis.commands"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        regs.append(m.register)
    return regs


def _multi_rank() -> bool:
    """Whether this process is one rank of a multi-rank job, as its launcher says (torchrun
    and the deepspeed launcher set WORLD_SIZE before Python starts)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


class _Sigterm:
    """SIGTERM handled as Ctrl-C, for the long commands that opt in (``train``, ``data
    write``: ``set_defaults(sigterm_as_interrupt=True)``), in a process of its own.

    Schedulers stop jobs with SIGTERM before SIGKILL (Slurm's preemption and time limit,
    Kubernetes, a spot reclaim, ``kill``). By default Python dies on it at once: the run
    folder's lock stays behind (a restart elsewhere waits for it to go stale) and nothing says
    what was kept. Raised as KeyboardInterrupt in the main thread, it takes Ctrl-C's path: the
    checkpoints already on disk are kept (they are written atomically), temporaries are
    removed, the lock is released, one line says how to continue, and the exit status is
    143 (128 + SIGTERM). A second SIGTERM while cleaning up ends the process at once.

    Left alone: a parent that ignores SIGTERM or set its own handler, and the ranks of a
    multi-rank job (WORLD_SIZE > 1), whose launcher (torchrun, deepspeed) SIGTERMs the
    survivors when one rank fails and SIGKILLs them after a grace period: a rank blocked in a
    collective could not run a Python handler within it."""

    received = False

    def __init__(self, wanted: bool):
        self.wanted = wanted and not _multi_rank()
        self.previous = None
        type(self).received = False

    def __enter__(self):
        import signal

        if self.wanted and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    @classmethod
    def _handler(cls, signum, frame):
        import signal

        cls.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:  # main() called in-process (tests): put it back
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _whole_lines() -> None:
    """Each line of a rank's stdout and stderr reaches the file in one write.

    Launchers start the ranks with ``python -u`` (the deepspeed launcher does), which makes
    the streams write-through: ``print`` then writes its text and its newline separately, and
    the ranks sharing the launcher's output interleave mid-line ("launcher deepspeedseltrain:
    rank 1 ..."). Line buffering over the same unbuffered file keeps ``-u``'s promise, nothing
    waits beyond the end of its line, and a line (up to the pipe's atomic 4 kB) stays whole.
    Only the interpreter's own streams, in a multi-rank job: never a caller's replacement."""
    import io

    if not _multi_rank():
        return
    for stream in (sys.stdout, sys.stderr):
        if type(stream) is io.TextIOWrapper and stream.write_through:
            stream.reconfigure(line_buffering=True, write_through=False)


def entry() -> None:
    """The ``seltrain`` program: the console script and ``python -m seltrain``.

    A rank of a multi-rank job ends without the interpreter's finalization, once ``main`` has
    torn its process group down and the ``atexit`` handlers have run. DeepSpeed keeps its
    process groups in module globals, so their gloo worker threads outlive
    ``destroy_process_group``; one that drops a finished collective's tensor (a Python object)
    while the interpreter is finalizing cannot take the GIL, and its exit aborts the process
    ("terminate called without an active exception", exit -6; core dumps show
    ProcessGroupGloo::AsyncWork's destructor, as in pytorch/pytorch#179291), after the run has
    finished and written everything. ``main()`` called in-process (the tests) returns
    normally."""
    code = main()
    if code in (130, 143):
        # Interrupted, cleaned up and said so: the exit status must be what the line
        # promises. A process that has handled its signal ignores any further one and
        # leaves through the path a rank takes below, so no late signal or interpreter-level
        # re-raise of the handled one can turn 130 into a death by SIGINT (-2).
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    if _multi_rank() or code in (130, 143):
        import atexit

        atexit._run_exitfuncs()  # what a normal exit runs first: logging, multiprocessing, ...
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    from seltrain.errors import Interrupted, SeltrainError, is_disk_full, no_space, one_line

    _whole_lines()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _Sigterm(getattr(args, "sigterm_as_interrupt", False)):
            return args.func(args) or 0
    except Interrupted as e:
        if _Sigterm.received:
            print(f"seltrain: terminated (SIGTERM): {one_line(e)}", file=sys.stderr, flush=True)
            return 143
        print(f"seltrain: interrupted: {one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code
    except SeltrainError as e:
        if os.environ.get("SELTRAIN_DEBUG"):
            raise
        print(f"seltrain: error: {one_line(e)}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        if _Sigterm.received:
            print("seltrain: terminated (SIGTERM)", file=sys.stderr, flush=True)
            return 143
        print("seltrain: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # The reader went away (`seltrain tune --dry-run | head`): stop quietly, as cat does.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by the pipe
    except OSError as e:
        # A full disk anywhere a command writes (metrics, TensorBoard, analysis outputs) is
        # the user's to fix, not a bug: one line naming where.
        if not is_disk_full(e) or os.environ.get("SELTRAIN_DEBUG"):
            raise
        print(f"seltrain: error: {no_space(e.filename, 'its output')}",
              file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
