"""A benchmark over many signals, in the shape of Orion's and sigllm's ``benchmark.py``,
resumable per window.

Signals come from folders (one folder per dataset, as Orion's benchmark data) or files;
labels in Orion's format. The leaderboard has a row for every signal, always: scored
(``OK``), not runnable (``ERROR``, with why: unreadable, too short for the pipeline) or
not finished (``PENDING``: run the same command again). Unlike Orion's ``resume``, which
skips a signal by file name and keeps its error rows forever, a rerun here recomputes only
windows not yet answered, and retries a signal whose file was fixed.

Scores are Orion's contextual ones (``sigray.evaluate``), per signal and per dataset, a
dataset's from the summed confusion matrices of its scored signals.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from sigray.errors import InputError, SignalStoppedRun, WindowingError
from sigray.evaluate import METHODS, confusion, load_labels, scores
from sigray.messages import Progress
from sigray.pool import WorkerPool
from sigray.progress import ProgressDisplay
from sigray.runner import RunResult
from sigray.signals import name_of

log = logging.getLogger(__name__)
OK, ERROR, PENDING = "OK", "ERROR", "PENDING"
NAN = float("nan")
SIGNAL_COLUMNS = ["dataset", "pipeline", "signal", "status", "windows", "failed_windows"]
SCORE_COLUMNS = ["precision", "recall", "f1", "tp", "fp", "fn"]


@dataclass(frozen=True)
class BenchmarkSignal:
    dataset: str  # the folder it was found in
    name: str
    path: str


@dataclass
class Leaderboard:
    """``signals``: one row per signal (``SIGNAL_COLUMNS``, ``SCORE_COLUMNS``, ``reason``);
    ``datasets``: one row per dataset and an ``ALL`` row; ``runs``: each store's run, by
    store (the benchmark's, and one per dataset with parameters of its own); ``result``: the
    first run that stopped, else the benchmark store's (None when no signal could run)."""

    signals: pd.DataFrame
    datasets: pd.DataFrame
    runs: dict[str, RunResult]
    method: str

    @property
    def result(self) -> RunResult | None:
        runs = list(self.runs.values())
        return next((run for run in runs if run.stopped), runs[0] if runs else None)

    @property
    def complete(self) -> bool:
        """Every runnable signal is scored (``ERROR`` rows stay until their files are fixed)."""
        return not (self.signals["status"] == PENDING).any()

    @property
    def stopped(self) -> bool:
        return self.result is not None and self.result.stopped


def find_signals(paths: list[str], labels_path: str | None = None) -> list[BenchmarkSignal]:
    """The signal CSVs of folders (their dataset is the folder's name) and files.

    Orion labels files beside the signals (columns signal,events or signal,start,end) are
    not signals and are skipped. Raises InputError for a path that does not exist, or two
    signals of one name (labels are looked up by name).
    """
    found = []
    for path in paths:
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".csv"))
            dataset = os.path.basename(os.path.normpath(path))
        elif os.path.isfile(path):
            files, dataset = [path], os.path.basename(os.path.dirname(os.path.abspath(path)))
        else:
            raise InputError(f"{path}: no such file or folder.")
        for file in files:
            if _is_labels_file(file) or (labels_path and os.path.abspath(file) == os.path.abspath(labels_path)):
                continue
            found.append(BenchmarkSignal(dataset, name_of(file), file))
    if not found:
        raise InputError(f"no signal CSV files in {', '.join(paths)}.")
    seen: dict[str, BenchmarkSignal] = {}
    for signal in found:
        if signal.name in seen:
            raise InputError(
                f"two signals are named {signal.name!r} ({seen[signal.name].path} and {signal.path}); "
                "labels are looked up by name: rename one, or benchmark them separately."
            )
        seen[signal.name] = signal
    return found


def _is_labels_file(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = {c.strip() for c in f.readline().split(",")}
    except OSError:
        return False
    return "signal" in header and ("events" in header or {"start", "end"} <= header)


def benchmark(
    paths: list[str],
    store: str,
    labels: str,
    *,
    method: str = "weighted",
    on_progress: Callable[[Progress], None] | None = None,
    progress: bool = True,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
    new: bool = False,
    **settings,
) -> Leaderboard:
    """Run (or resume) a pipeline over every signal of ``paths`` in one store, and score it.

    A dataset sigllm has parameters for (``prompter_realtweets.json`` and the like, by the
    dataset's folder name: ``dataset_parameters``) runs with them, under ``--param``, in a
    store of its own beside it, ``<store>-<dataset>``; the runs go one after the other.

    ``method``: Orion's ``weighted`` contextual scores (its benchmark's default: events
    counted by duration) or ``overlap`` (an event counts when any part of it is found).
    ``on_progress``, ``progress``, ``new``, ``settings``: as ``sigray.run``. Signals that
    cannot run are left on their ``ERROR`` row and the others run; bad labels, settings or
    engines refuse the whole benchmark before anything starts (InputError, ConfigError...).
    """
    from sigray.api import run_config, run_plan, settled_in
    from sigray.plan import make_plan

    if method not in METHODS:
        raise InputError(f"unknown scoring method {method!r}; choose {' or '.join(METHODS)}.")
    known = load_labels(labels)
    found = find_signals(paths, labels)
    if not {s.name for s in found} & set(known):
        raise InputError(
            f"labels file {labels} names none of the {len(found)} signals ({', '.join(s.name for s in found[:5])}...); "
            f"it names {', '.join(sorted(known)[:5])}...: give the labels of these signals."
        )
    config = run_config(store, settings)
    rejected: dict[str, str] = {}
    runs: dict[str, RunResult] = {}
    run_of: dict[str, RunResult] = {}  # signal name -> its run
    started = time.monotonic()
    prepared: set[str] = set()  # stores a run of this call prepared
    pool = WorkerPool()  # engines stay loaded from one store to the next, and after a signal stopped a run

    def run_store(where: str, group_config, group: list[BenchmarkSignal]) -> RunResult | None:
        """One store's run, again without each signal that cannot be windowed (on its ERROR row),
        from what is saved; None when no signal is left or the benchmark is out of time."""
        while True:
            left_s = None if deadline_s is None else max(0.0, deadline_s - (time.monotonic() - started))
            if runs and left_s == 0.0:
                return None
            with ProgressDisplay(quiet=not progress) as planning:
                sources = [(s.name, s.path) for s in group if s.name not in rejected]
                settled = settled_in(group_config, new)
                plan = make_plan(group_config, sources, settled=settled, rejected=rejected, on_planned=planning.planned)
            if not plan.plans:
                return None
            try:
                return run_plan(
                    plan,
                    on_progress=on_progress,
                    progress=progress,
                    deadline_s=left_s,
                    ray_options=ray_options,
                    new=new and where not in prepared,  # --new replaces a store once, never the answers since
                    pool=pool,
                )
            except (WindowingError, SignalStoppedRun) as exc:
                if isinstance(exc, SignalStoppedRun):  # the store was prepared (replaced, with --new)
                    prepared.add(where)
                rejected[exc.signal] = exc.reason
                log.warning("%s (On its ERROR row; the others go on.)", exc.reason)

    try:
        for where, params, group in _parameter_sets(found, config, store):
            if any(run.stopped for run in runs.values()):
                break  # a stop ends the benchmark: the signals left stay PENDING, the same command goes on
            result = run_store(where, config.replace(store=where, pipeline_params=params), group)
            if result is not None:
                runs[where] = result
                run_of.update(dict.fromkeys((s.name for s in group), result))
    finally:
        pool.close()
    pipeline = config.pipeline
    rows = [_row(s, pipeline, rejected, run_of.get(s.name), known, METHODS[method]) for s in found]
    table = pd.DataFrame(rows, columns=[*SIGNAL_COLUMNS, *SCORE_COLUMNS, "reason"])
    table = table.astype({"windows": "Int64", "failed_windows": "Int64"})  # blank where a signal did not run
    return Leaderboard(table, summarize(table), runs, method)


def dataset_parameters(pipeline: str, dataset: str) -> dict:
    """sigllm's hyperparameters for ``dataset`` under ``pipeline``: the JSON named
    ``<folder>_<dataset>.json`` (lower case) beside the pipeline's own, as sigllm's
    ``benchmark.py`` looks them up (``prompter/prompter_realtweets.json`` for NAB's realTweets
    with any prompter); {} when there is none."""
    from importlib import resources

    if pipeline.endswith(".json"):
        folder = os.path.dirname(os.path.abspath(pipeline))
    else:
        root = resources.files("sigllm").joinpath("pipelines")
        folders = [str(f) for f in root.iterdir() if f.is_dir() and f.joinpath(f"{pipeline}.json").is_file()]
        if not folders:
            return {}
        folder = folders[0]
    path = os.path.join(folder, f"{os.path.basename(folder)}_{dataset.lower()}.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        params = json.load(f)
    return _with_normals_aggregation(params, pipeline)


def _with_normals_aggregation(params: dict, pipeline: str) -> dict:
    """A one-shot prompter aggregates its normal reference in a second ``time_segments_aggregate``:
    it gets the dataset's interval too, as sigllm's ``benchmark._augment_hyperparameters`` gives it."""
    from sigray.pipelines.sigllm_pipeline import block_names, load_pipeline_spec

    names = block_names(load_pipeline_spec(pipeline)["primitives"])
    params = dict(params)
    for block, values in list(params.items()):
        if "time_segments_aggregate#" in block:
            following = f"{block[: block.rindex('#') + 1]}{int(block.rsplit('#', 1)[1]) + 1}"
            if following in names:
                params.setdefault(following, values)
    return params


def _parameter_sets(found: list[BenchmarkSignal], config, store: str):
    """(store, pipeline parameters, signals) per run: the datasets sigllm has parameters for
    (``dataset_parameters``) each in a store of their own, ``<store>-<dataset>`` (a store holds
    one generation), under the benchmark's ``--param`` (which win); the others in ``store``."""
    groups: dict[str | None, list[BenchmarkSignal]] = {}
    own: dict[str, dict] = {}
    for signal in found:
        params = own.setdefault(signal.dataset, dataset_parameters(config.pipeline, signal.dataset))
        groups.setdefault(signal.dataset if params else None, []).append(signal)
    for dataset, group in sorted(groups.items(), key=lambda item: item[0] is not None):
        if dataset is None:
            yield store, config.pipeline_params, group
            continue
        params = {block: dict(values) for block, values in own[dataset].items()}
        for block, values in config.pipeline_params.items():
            params.setdefault(block, {}).update(values)
        yield f"{store.rstrip('/')}-{dataset.lower()}", params, group


def _row(signal: BenchmarkSignal, pipeline: str, rejected, result: RunResult | None, labels, weighted) -> dict:
    row = {"dataset": signal.dataset, "pipeline": pipeline, "signal": signal.name}
    if signal.name in rejected:
        return {**row, "status": ERROR, "reason": rejected[signal.name]}
    finished = result.signals.get(signal.name) if result is not None else None
    if finished is None:
        return {**row, "status": PENDING, "reason": "windows still pending: run the same command again"}
    row.update(status=OK, windows=finished.n_windows, failed_windows=len(finished.failed_windows))
    if signal.name not in labels:
        return {**row, "reason": "not in the labels file: not scored"}
    tp, fp, fn = confusion(labels[signal.name], finished.anomalies, weighted)
    return {**row, **scores(tp, fp, fn), "reason": ""}


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and ``ALL``: how many signals ran, errored, are pending; windows; and the
    scores of the summed confusion matrices of its scored signals."""
    rows = []
    for dataset, group in [*table.groupby("dataset", sort=True), ("ALL", table)]:
        scored = group.dropna(subset=["tp"])
        totals = scored[["tp", "fp", "fn"]].sum()
        summed = scores(totals["tp"], totals["fp"], totals["fn"]) if len(scored) else dict.fromkeys(SCORE_COLUMNS, NAN)
        rows.append(
            {
                "dataset": dataset,
                "signals": len(group),
                "scored": len(scored),
                "errors": int((group["status"] == ERROR).sum()),
                "pending": int((group["status"] == PENDING).sum()),
                "windows": int(group["windows"].sum()),  # per signal: a window two signals share counts twice
                "failed_windows": int(group["failed_windows"].sum()),
                **summed,
            }
        )
    return pd.DataFrame(rows)


def plot_leaderboard(board: Leaderboard, path: str) -> str:
    """F1, precision and recall per dataset (left) and F1 per signal (right); ``ERROR`` and
    ``PENDING`` signals are named with their status instead of a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = board.signals
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, max(3.0, 0.3 * len(signals) + 1.5)), gridspec_kw={"width_ratios": [1, 2]}
    )
    datasets = board.datasets.fillna(0.0)
    width = 0.25
    for i, name in enumerate(["f1", "precision", "recall"]):
        left.bar([x + (i - 1) * width for x in range(len(datasets))], datasets[name], width, label=name)
    left.set_xticks(range(len(datasets)), datasets["dataset"], rotation=30, ha="right")
    left.set_ylim(0, 1)
    left.set_title(f"per dataset ({board.method})")
    left.legend()
    labels = [s if st == OK else f"{s} ({st})" for s, st in zip(signals["signal"], signals["status"])]
    right.barh(range(len(signals)), signals["f1"].fillna(0.0), color="tab:blue")
    right.set_yticks(range(len(signals)), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_title("F1 per signal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
