"""The ``embtab`` command: ``demo``, ``experiment``, ``bench``.

``embtab demo`` runs the experiments the registry marks for the demo (E1 dims, E2 collisions,
E3 calibration and E5 feedback; :func:`embtab.experiments.run_demo`); ``embtab experiment NAME``
runs one registered experiment (E1-E5; E4 ``rerank-speed`` is registered here, because it times
the tools layer's benchmark); ``embtab bench NAME`` runs one benchmark of
``embtab.benchmarks.REGISTRY``.

Examples::

    embtab demo --out embtab-demo                     # E1 + E2 + E3 + E5 on synthetic data
    embtab experiment dims --dataset movielens:../shared/data/ml-100k --seeds 3 --out runs/e1
    embtab experiment calibration --quick --out runs/e3
    embtab bench rerank --quick --out rerank.json
    embtab --version

A mistake in the arguments or the inputs (a bad data set spec, a missing or unreadable file, an
output path that cannot be written, too few seeds or items) ends with a one-line
``embtab ...: error`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["int_at_least", "main"]

#: what --quick changes for the training experiments (default seeds: 3 -> 1)
QUICK_SEEDS = 1

#: the errors a user's input can cause (reported in one line, exit status 2)
USER_ERRORS = (ValueError, OSError, MemoryError)   # MemoryError: a size too large for this machine


def _version() -> str:
    try:
        from embtab import __version__

        return __version__
    except ImportError:  # pragma: no cover - the compiled core is missing
        from importlib.metadata import version

        return version("embtab")


def _rerank_benchmark():
    return _benchmarks()["rerank"].load()


def _registry() -> dict:
    """The experiment registry with the tools layer's E4 (``rerank-speed``) registered."""
    from embtab.experiments import REGISTRY, register, rerank_speed

    if "rerank-speed" not in REGISTRY:
        register(rerank_speed.entry(_rerank_benchmark))
    return REGISTRY


def _benchmarks() -> dict:
    """``embtab.benchmarks.REGISTRY``: benchmark name -> entry (imports no benchmark module)."""
    from embtab.benchmarks import REGISTRY

    return REGISTRY


def int_at_least(low: int, hint: str = ""):
    """An argparse ``type``: the flag's text as an int ``>= low``, else argparse's one-line
    error naming the flag ("argument --batch: must be >= 1, got 0"; ``hint`` is added in
    brackets). Used by the CLI, the bench scripts and the examples.

    Example::

        >>> import argparse
        >>> ap = argparse.ArgumentParser()
        >>> _ = ap.add_argument("--batch", type=int_at_least(1))
        >>> ap.parse_args(["--batch", "8"]).batch
        8
    """
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {low}, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(
                f"must be >= {low}{f' ({hint})' if hint else ''}, got {n}")
        return n

    return parse


class _Once(argparse.Action):
    """An option's value, refused when the option is given twice (argparse would keep the
    last value silently, where a data set spec refuses a repeated key)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "_given_" + self.dest, False):
            parser.error(f"argument {option_string}: given twice; give it once")
        setattr(namespace, "_given_" + self.dest, True)
        setattr(namespace, self.dest, values)


_MAX_SEEDS = 10_000


def _seeds(text: str) -> int:
    n = int_at_least(1, "seeds 0..N-1")(text)
    if n > _MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_SEEDS:,} (seeds 0..N-1, each "
                                         f"trained in turn), got {n}")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``embtab demo: error: ...``, exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _parser() -> argparse.ArgumentParser:
    registry = _registry()
    p = _Parser(
        prog="embtab",
        description="Collisionless embedding tables, calibrated reranking and popularity-bias "
                    "experiments.")
    p.add_argument("--version", action="version", version=f"embtab {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{demo,experiment,bench}",
                           parser_class=_Parser)

    demo = [e for e in registry.values() if e.in_demo]
    d = sub.add_parser("demo", help=f"{' + '.join(e.label for e in demo)}, a run of a few "
                                    "minutes on 2 cores (on synthetic data unless --dataset "
                                    "names other data); writes a report")
    d.add_argument("--out", action=_Once, default="embtab-demo",
                   help="output folder (default: embtab-demo)")
    d.add_argument("--seeds", action=_Once, type=_seeds, default=3,
                   help="number of seeds (default 3)")
    d.add_argument("--dataset", action=_Once, default="synthetic",
                   help="data set spec as for 'experiment' (default: synthetic)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("experiment", help="run one experiment ("
                       + ", ".join(f"{x.label} {x.name}" for x in registry.values()) + ")")
    e.add_argument("name", choices=list(registry))
    e.add_argument("--dataset", action=_Once, default=None,
                   help="synthetic[:key=value,...] | stream[:key=value,...] | movielens:PATH | "
                        "interactions:PATH[,categories=PATH] (default: synthetic; not for "
                        "experiments that make their own workload)")
    e.add_argument("--seeds", action=_Once, type=_seeds, default=None,
                   help="number of seeds 0..N-1 (default 3, or 1 with --quick)")
    e.add_argument("--quick", action="store_true",
                   help="fewer seeds (1) and each experiment's quick mode where it has one "
                        "(smaller data sets, grids, rounds or epochs; for rerank-speed, a "
                        "smaller benchmark)")
    e.add_argument("--out", action=_Once, default=None,
                   help="output folder (default: embtab-<name>)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--tune", action="store_true",
                   help=f"experiments that take it ({', '.join(_taking(registry, 'tune'))}): "
                        "pick lr, L2 and epochs per configuration and seed on a validation "
                        "split (a smaller grid with --quick)" + _tuned_anyway(registry))
    e.add_argument("--loss", action=_Once, choices=("bpr", "softmax"), default=None,
                   help=f"experiments that take it ({', '.join(_taking(registry, 'loss'))}): "
                        "the training loss (default bpr)")

    benches = _benchmarks()
    b = sub.add_parser("bench", help="performance comparisons: " + "; ".join(
        f"{n}: {e.summary}" for n, e in benches.items()))
    b.add_argument("name", choices=list(benches))
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    b.add_argument("--out", action=_Once, default=None,
                   help="write the raw results JSON to this file")
    b.add_argument("--isa", action=_Once, choices=("auto", "avx2", "baseline"), default="auto",
                   help="cap the SIMD level embtab dispatches to (time an AVX2-only or SSE2 CPU "
                        "on this one; the results name the capped level); default auto")
    return p


def _refuse_file_ancestor(out: Path) -> None:
    """ValueError when the nearest existing folder above ``out`` is a file."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            return


def _check_out_dir(out: str) -> Path:
    """The output folder ``out``, created; refused (before any work) when empty, a file, or
    impossible to create."""
    if not str(out).strip():
        raise ValueError("--out is empty; name an output folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    _refuse_file_ancestor(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _out_dir(out: str):
    """:func:`_check_out_dir`, and the folder removed again if this call created it and the
    work under it fails before writing anything (a bad ``--dataset``, say)."""
    created = not Path(out).exists()
    path = _check_out_dir(out)
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def _demo(args) -> int:
    from embtab.experiments import run_demo

    with _out_dir(args.out):
        paths = run_demo(args.out, progress=not args.quiet, seeds=args.seeds, dataset=args.dataset)
    print(f"report: {paths['report']}")
    print(f"results: {paths['results']}")
    return 0


def _experiment(args) -> int:
    from embtab.experiments import run_experiments

    if not _registry()[args.name].needs_data:
        given = [o for o, v in (("--dataset", args.dataset), ("--seeds", args.seeds))
                 if v is not None]
        if given:
            raise ValueError(f"{given[0]} does not apply to {args.name}, which makes its own "
                             f"workload (see embtab experiment {args.name} --help)")
    dataset = "synthetic" if args.dataset is None else args.dataset
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 3)
    extra = _training_options(args)
    with _out_dir(f"embtab-{args.name}" if args.out is None else args.out) as out:
        paths = run_experiments([args.name], out, dataset=dataset, seeds=seeds,
                                quick=args.quick, progress=not args.quiet,
                                title=f"embtab experiment {args.name}",
                                kwargs={args.name: extra} if extra else None)
    print(f"report: {paths['report']}")
    print(f"results: {out / (args.name + '.json')}")
    return 0


def _training_options(args) -> dict:
    """``--tune`` / ``--loss`` as keyword arguments of the experiment's run function.

    ``ValueError`` when the experiment's run function takes no ``tune`` / ``loss``.
    """
    extra = {}
    if args.tune:
        extra["tune"] = True
        if args.quick:
            extra["quick"] = True
    if args.loss is not None:
        extra["loss"] = args.loss
    if extra:
        import inspect

        registry = _registry()
        params = inspect.signature(registry[args.name].run).parameters
        missing = [k for k in extra if k not in params]
        if missing:
            raise ValueError(f"--{missing[0]} does not apply to {args.name} (only to "
                             f"{', '.join(_taking(registry, missing[0]))})")
    return extra


def _tuned_anyway(registry: dict) -> str:
    """'; NAME tunes by default' for the experiments whose ``tune`` defaults to True."""
    import inspect

    on = [n for n in _taking(registry, "tune")
          if inspect.signature(registry[n].run).parameters["tune"].default is True]
    return f"; {', '.join(on)} {'tune' if len(on) > 1 else 'tunes'} without it" if on else ""


def _taking(registry: dict, option: str) -> list:
    """The experiments whose run function takes keyword ``option`` (``tune``, ``loss``)."""
    import inspect

    return [n for n, e in registry.items() if option in inspect.signature(e.run).parameters]


def _bench(args) -> int:
    entry = _benchmarks()[args.name]
    try:
        mod = entry.load()
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == entry.module or entry.module.startswith(e.name + ".")):
            print(f"embtab bench {args.name}: {entry.module} is not part of this installation "
                  "(not written yet, or installed without it)", file=sys.stderr)
            return 2
        raise
    if not (hasattr(mod, "run") and hasattr(mod, "format_markdown")):
        print(f"embtab bench {args.name}: {entry.module} has no run()/format_markdown()",
              file=sys.stderr)
        return 2
    out = None
    if args.out is not None:
        if not args.out.strip():
            raise ValueError("--out is empty; name a file for the raw results")
        out = Path(args.out)
        _check_out_file(out)
    from embtab.benchmarks._harness import isa_cap

    with isa_cap(args.isa):
        results = mod.run(quick=args.quick)
    print(mod.format_markdown(results))
    if out is not None:
        from embtab.experiments import jsonable

        out.write_text(json.dumps(jsonable(results), indent=1) + "\n")
        print(f"raw results: {out}")
    return 0


def out_file(text: str) -> Path:
    """An argparse ``type`` for an output file: refuses, while the arguments are parsed (so
    before a benchmark runs), a path that is a folder, under a path that is a file, or in a
    folder that cannot be created or written, as argparse's one-line error naming the flag;
    creates the missing folders above it. Used by the scripts in bench/ (``embtab bench``
    makes the same check)."""
    try:
        out = Path(text)
        _check_out_file(out)
    except (ValueError, OSError) as e:
        msg = str(e)
        raise argparse.ArgumentTypeError(msg[len("--out "):] if msg.startswith("--out ")
                                         else msg) from None
    return out


def _check_out_file(out: Path) -> None:
    """Refuse, before the benchmark runs, an output file that is a folder, under a path that
    is a file, or in a folder that cannot be created or written; create the missing folders
    above it."""
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; expected a file name")
    _refuse_file_ancestor(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=out.parent):   # OSError (one line) if not writable
            pass
    except OSError as e:
        raise OSError(e.errno, f"cannot write the results there ({e.strerror})",
                      str(out)) from None


def main(argv=None) -> int:
    """Entry point of the ``embtab`` console script; returns the exit status."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by its command, as every other mistake in the arguments
        where = " ".join(["embtab", args.command or ""] + ([args.name] if getattr(args, "name", None)
                                                           else [])).strip()
        print(f"{where}: unrecognized arguments: {' '.join(unknown)} (see embtab "
              f"{args.command or ''} --help)".replace("  ", " "), file=sys.stderr)
        return 2
    commands = {"demo": _demo, "experiment": _experiment, "bench": _bench}
    if args.command not in commands:
        _parser().print_help()
        return 1
    where = f"embtab {args.command}" + (f" {args.name}" if hasattr(args, "name") else "")
    try:
        # demo and experiment write through a staging folder: SIGTERM unwinds them as Ctrl-C
        # does, so that it is removed (bench keeps the default action)
        with _terminate_as_interrupt(args.command in ("demo", "experiment")):
            return commands[args.command](args)
    except (KeyboardInterrupt, _Terminated) as e:
        # one line instead of a traceback; re-raised, so that a caller (console_main) ends
        # the process by the signal itself
        print(f"{where}: interrupted ({'SIGTERM' if isinstance(e, _Terminated) else 'SIGINT'})",
              file=sys.stderr)
        raise
    except USER_ERRORS as e:
        print(f"{where}: {_one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:       # an optional dependency (matplotlib: the experiments extra)
        print(f"{where}: {_one_line(e)}", file=sys.stderr)
        return 2


def console_main() -> None:
    """The ``embtab`` console script and ``python -m embtab``: :func:`main`, exiting with its
    status. Interrupted by SIGINT or SIGTERM (after the command's cleanup and its one-line
    message), the process ends by that signal, as a shell loop expects of a child it should
    stop for (an exit status of 130 would let ``for ...; do embtab ...; done`` go on)."""
    try:
        with _one_line_warnings(_command_name(sys.argv[1:])):
            status = main()
    except KeyboardInterrupt:
        _end_by(signal.SIGINT)
    except _Terminated:
        _end_by(signal.SIGTERM)
    sys.exit(status)


def _end_by(sig: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)   # (where the signal does not end the process at once)


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM while a command runs (see _terminate_as_interrupt)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _default_sigterm_in_child() -> None:
    # a process forked while a command runs (a benchmark's ranks, a data loader's workers)
    # gets the default SIGTERM action back: its parent's handler would make it print a
    # traceback, or keep it alive, where its launcher stops it with SIGTERM
    try:
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:   # not the main thread
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_child)


@contextlib.contextmanager
def _terminate_as_interrupt(enable: bool = True):
    """SIGTERM raises _Terminated in the main thread, as SIGINT raises KeyboardInterrupt, so
    that a terminated run cleans up as an interrupted one does (its staging folder removed,
    the output folder left as it was) instead of the process dying where it stands. Only
    with ``enable``, where Python's default SIGTERM action is in place, and in the main
    thread; forked children get the default action back."""
    if (not enable or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# the options that take a value (as the next word when not written --opt=value)
_VALUED = ("--out", "--dataset", "--seeds", "--loss", "--isa")


def _command_name(argv: list) -> str:
    """``embtab COMMAND [NAME]`` from the command line, for the one-line warnings."""
    words, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in _VALUED   # its value is the next word
        else:
            words.append(a)
    words = words[:2]
    if words and words[0] not in ("experiment", "bench"):
        words = words[:1]
    return " ".join(["embtab"] + words)


@contextlib.contextmanager
def _one_line_warnings(where: str):
    """Warnings shown as one line each, named by the command (``embtab experiment dims:
    warning: ...``), instead of Python's file, line and source line of code. Installed by the
    console script only (a caller of :func:`main`, such as a test recording warnings, keeps
    Python's own display)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = _one_line(message) if isinstance(message, BaseException) else message
        print(f"{where}: warning: {text}", file=sys.stderr if file is None else file)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    console_main()
