"""Running experiments by name: results JSON, plots and the report, all read from the registry."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from embtab.experiments.plots import pyplot
from embtab.experiments.registry import REGISTRY, get
from embtab.experiments.report import render_report
from embtab.experiments.results import save_results
from embtab.experiments.session import Session, seed_list

__all__ = ["EXPERIMENTS", "plot_results", "run_demo", "run_experiments"]


class _RunFunctions(Mapping):
    """name -> the experiment's run function, a live view of the registry."""

    def __getitem__(self, name: str):
        return REGISTRY[name].run

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


#: name -> run function of every registered experiment (a read-only view of ``REGISTRY``).
EXPERIMENTS: Mapping = _RunFunctions()


def plot_results(results: dict, out_dir, prefix: str = "") -> list:
    """All plots of one experiment's results into ``out_dir`` (its registry entry's ``plot``);
    returns the paths (none for an experiment without plots or not registered)."""
    entry = REGISTRY.get(results["experiment"])
    if entry is None or entry.plot is None:
        return []
    return entry.plot(results, out_dir, prefix)


def run_experiments(names: Sequence[str], out_dir, *, dataset: str = "synthetic", seeds=3,
                    quick: bool = False, progress: bool = True,
                    train_overrides: dict | None = None, title: str = "embtab experiments",
                    kwargs: dict | None = None) -> dict:
    """Run experiments sharing one data set and model cache; write JSON, plots and report.

    Writes ``out_dir/<name>.json`` per experiment, ``out_dir/results.json`` (a list of the
    per-experiment objects), PNG plots and ``out_dir/report.md``. Returns
    ``{"report", "results", "plots"}`` paths. Names, seeds, each experiment's data set
    requirement and the training overrides it takes are checked before anything runs
    (``ValueError``), and so are matplotlib
    (``ImportError`` naming the ``experiments`` extra) and the folder (an ``OSError`` if it
    cannot be written).

    The files are written into a hidden folder inside ``out_dir`` and moved into ``out_dir``
    only once every experiment has finished, so a run that fails or is interrupted leaves what
    ``out_dir`` held before as it was (never a report beside another run's results). A run
    into a folder that holds an earlier run's files replaces the report and the files of the
    experiments it reruns: of the files the earlier run listed in ``out_dir/embtab-run.json``,
    those of a rerun experiment (or the report's) that this run does not write are removed;
    the files of experiments it does not rerun stay (and stay listed). Any other file is left
    alone, and a file of the run's that is in the folder but that no earlier run listed (the
    user's own ``report.md``) is refused with ``FileExistsError``, before training when its
    name is known then (the report, the results, the experiments' JSON), else before anything
    moves, with the run's files kept in a folder the error names.
    ``kwargs`` maps a name to extra keyword arguments of its run function. ``quick`` reaches
    every experiment whose run function takes a ``quick`` argument (its smaller quick mode).
    """
    entries = [get(n) for n in names]
    kwargs = kwargs or {}
    needs_data = [e for e in entries if e.needs_data]
    if needs_data:
        seed_list(seeds)
    for e in needs_data:
        if e.check_dataset is not None:
            e.check_dataset(dataset)
        if e.check_overrides is not None:
            e.check_overrides(train_overrides)
    if any(e.plot is not None for e in entries):
        pyplot()            # a missing matplotlib fails here, before minutes of training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the files every run writes, refused before minutes of training when a folder is in the
    # way, or a file no earlier run wrote (the plots' names are known only once plotted:
    # _publish checks them)
    for name in ["report.md", "results.json", MANIFEST] + [f"{e.name}.json" for e in entries]:
        if (out / name).exists() and not (out / name).is_file():
            raise OSError(f"{out / name}: is not a file; the run's {name} cannot replace it")
    _refuse_unlisted(out, ["report.md", "results.json"] + [f"{e.name}.json" for e in entries],
                     _manifest(out)["files"])
    try:
        stage = Path(tempfile.mkdtemp(prefix=".embtab-run-", dir=out))
    except OSError as e:   # an unwritable out fails here: named as the caller gave it
        raise OSError(e.errno, f"cannot write the run's files there ({e.strerror})",
                      str(out)) from None
    try:
        s = Session(dataset, train_overrides, progress) if needs_data else None
        results, plots = [], {}
        for entry in entries:
            name = entry.name
            if entry.needs_data:
                extra = dict(kwargs.get(name, {}))
                if quick and "quick" in inspect.signature(entry.run).parameters:
                    extra.setdefault("quick", True)
                res = entry.run(dataset, seeds, progress=progress, session=s, **extra)
            else:
                res = entry.run(quick=quick, progress=progress, **kwargs.get(name, {}))
            save_results(res, stage / f"{name}.json")
            plots[name] = [p.name for p in plot_results(res, stage)]
            results.append(res)
        save_results(results, stage / "results.json")
        (stage / "report.md").write_text(render_report(results, plots, title=title))
        _publish(stage, out, {e.name: [f"{e.name}.json", *plots[e.name]] for e in entries})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"report": out / "report.md", "results": out / "results.json",
            "plots": [out / p for ps in plots.values() for p in ps]}


#: The list of files a run wrote into its output folder (see :func:`run_experiments`).
MANIFEST = "embtab-run.json"


def _refuse_unlisted(out: Path, names, listed: set) -> None:
    """FileExistsError when a file the run writes is in ``out`` but no earlier run listed it in
    ``out``'s manifest (the user's own file, which the run would replace)."""
    clash = [n for n in names if os.path.lexists(out / n) and n not in listed]
    if clash:
        them = "them" if len(clash) > 1 else "it"
        raise FileExistsError(
            f"{out}: {', '.join(clash)} would be replaced by this run, but no earlier embtab "
            f"run in this folder wrote {them} ({MANIFEST} does not list {them}); nothing was "
            f"changed: move {them} away, or give another output folder")


def _publish(stage: Path, out: Path, owned: dict) -> None:
    """Move a finished run's files (and its manifest) from ``stage`` into ``out``, all or
    none: the files they replace are moved aside first and put back if any move fails or is
    interrupted. ``owned`` maps each experiment of the run to its files (the others, the
    report and results.json, are the run's). Then remove the files that the run before listed
    in ``out``'s manifest for the experiments this one reran, or as its report, and this one
    did not write; the files of experiments this run did not include stay, and stay listed.
    A file of the run that is in ``out`` but no earlier run listed (the user's own) stops the
    publication before anything moves, and the run's files are kept in a folder named in the
    error."""
    names = sorted(p.name for p in stage.iterdir())
    for name in names + [MANIFEST]:   # before anything moves: a folder in the way is an error
        if (out / name).exists() and not (out / name).is_file():
            raise OSError(f"{out / name}: is not a file; the run's {name} cannot replace it")
    before = _manifest(out)
    try:
        _refuse_unlisted(out, names, before["files"])
    except FileExistsError as e:
        keep = Path(tempfile.mkdtemp(prefix="embtab-run-unpublished-", dir=out))
        for name in names:
            os.replace(stage / name, keep / name)
        raise FileExistsError(f"{e}; this run's files are in {keep}") from None
    # the earlier run's files of experiments this one did not rerun stay, and stay listed
    carried = {e: fs for e, fs in before["by_experiment"].items() if e not in owned}
    kept = {f for fs in carried.values() for f in fs if os.path.lexists(out / f)} - set(names)
    manifest = {"files": sorted(set(names) | kept),
                "by_experiment": {e: sorted(fs) for e, fs in {**carried, **owned}.items()}}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    names.append(MANIFEST)
    backup = Path(tempfile.mkdtemp(prefix=".embtab-old-", dir=out))
    moved, placed = [], []
    try:
        try:
            for name in names:
                if os.path.lexists(out / name):
                    os.replace(out / name, backup / name)
                    moved.append(name)
                os.replace(stage / name, out / name)
                placed.append(name)
        except BaseException:
            for name in placed:
                (out / name).unlink(missing_ok=True)
            for name in moved:
                os.replace(backup / name, out / name)
            raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)
    for name in sorted(before["files"] - set(names) - kept):
        path = out / name
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
        except OSError:
            pass   # a stale file that cannot be removed stays; the new run is complete


def _manifest(out: Path) -> dict:
    """What an earlier run's manifest in ``out`` lists: ``{"files": set of plain file names,
    "by_experiment": {name: [file names]}}`` (empty if it is missing or not a manifest; a
    manifest without ``by_experiment``, of an earlier version, owns all its files as the
    run's)."""
    empty = {"files": set(), "by_experiment": {}}
    try:
        m = json.loads((out / MANIFEST).read_text())
        files = m["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return empty
    if not isinstance(files, list):
        return empty

    def plain(f):
        return isinstance(f, str) and f not in ("", ".", "..", MANIFEST) and f == Path(f).name

    files = {f for f in files if plain(f)}
    by = m.get("by_experiment")
    by = {e: [f for f in fs if plain(f) and f in files] for e, fs in by.items()
          if isinstance(e, str) and isinstance(fs, list)} if isinstance(by, dict) else {}
    return {"files": files, "by_experiment": by}


def demo_names() -> list:
    """The experiments ``embtab demo`` runs: the registry's ``in_demo`` entries, in order."""
    return [e.name for e in REGISTRY.values() if e.in_demo]


def run_demo(out_dir="embtab-demo", *, progress: bool = True, seeds=3,
             dataset: str = "synthetic") -> dict:
    """``embtab demo``: the registry's demo experiments (E1 + E2 + E3 + E5) on ``dataset``.

    Minutes on 2 cores with the default synthetic data. E5 (the feedback loop) runs on its own
    quick mode (``run_feedback(quick=True)``: 5 rounds, and its own small data set
    ``QUICK["dataset"]`` when ``dataset`` is ``"synthetic"``). Uses the default
    :class:`embtab.train.TrainConfig` (10 epochs) and 3 seeds; E3 with both candidate counts.
    See :func:`run_experiments` for what is written.
    """
    what = ("synthetic power-law data" if dataset.startswith("synthetic")
            else f"`{dataset}`")
    return run_experiments(demo_names(), out_dir, dataset=dataset, seeds=seeds,
                           progress=progress, title=f"embtab demo: popularity bias on {what}",
                           kwargs={"feedback": {"quick": True}})
