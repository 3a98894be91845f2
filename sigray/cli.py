"""The ``sigray`` command: run, detect, demo, status, results, evaluate, plot. Everything here calls the public API."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
import warnings

from sigray.errors import ConfigError, InputError, SigrayError, SigrayWarning

EXIT_ERROR = 1
_FIND_ANOMALIES = "orion.primitives.timeseries_anomalies.find_anomalies#1"
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3  # results, evaluate, plot, detect: some signals have no results yet (named on stderr)
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on purpose, run the same command to resume
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (`sigray status | head -1`), as 128 + SIGPIPE


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    with warnings.catch_warnings():
        warnings.simplefilter("always", SigrayWarning)
        warnings.showwarning = _show_warning
        try:
            with _stdout_for_json_only(args):
                return args.command(args)
        except SigrayError as exc:
            print(f"sigray: error: {exc}", file=sys.stderr)
            return EXIT_USAGE if _is_usage_error(exc) else EXIT_ERROR
        except KeyboardInterrupt:
            print("sigray: interrupted; run the same command to resume.", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # Nobody reads the rest: say nothing more (Python would print a traceback at exit).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE


class _LogFormat(logging.Formatter):
    """sigray's own log lines read as its other messages ("sigray: warning: ..."); other
    libraries' keep their level and name."""

    def __init__(self):
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] == "sigray":
            return f"sigray: {record.levelname.lower()}: {record.getMessage()}"
        return super().format(record)


@contextlib.contextmanager
def _stdout_for_json_only(args):
    """With ``--json``, stdout carries the JSON alone (``args.stdout``): what else prints
    meanwhile, as Ray's lines about a worker that died, goes to stderr, until Ray is left."""
    args.stdout = sys.stdout
    if not getattr(args, "json", False):
        yield
        return
    ray_was_up = _ray_is_up()  # a caller's (main() called in a process already on Ray): left up
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        finally:
            if _ray_is_up() and not ray_was_up:
                sys.modules["ray"].shutdown()  # its log thread prints until then


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _print_json(args, value, indent: int | None = 2) -> None:
    print(json.dumps(value, indent=indent), file=args.stdout, flush=True)


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SigrayWarning):
        print(f"sigray: warning: {message}", file=sys.stderr, flush=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _is_usage_error(exc: SigrayError) -> bool:
    from sigray.errors import ModelNotFoundError, StoreError

    return isinstance(exc, (ConfigError, InputError, ModelNotFoundError, StoreError))


# -- run ----------------------------------------------------------------------


def _sigterm_stops_gracefully(command):
    """A SIGTERM while the run still plans or connects is a graceful stop too (``sigray.stopping``)."""

    @functools.wraps(command)
    def wrapped(args) -> int:
        from sigray.stopping import StopRequested

        with StopRequested():
            return command(args)

    return wrapped


@_sigterm_stops_gracefully
def cmd_run(args) -> int:
    from sigray.api import run

    result = run(
        _signal_sources(args.signals),
        args.store,
        progress=not (args.quiet or args.json),
        deadline_s=args.deadline,
        ray_options=_ray_options(args),
        new=args.new,
        **_run_settings(args),
    )
    return _report(result, args)


@_sigterm_stops_gracefully
def cmd_detect(args) -> int:
    from sigray.api import detect

    fix = {"on": True, "off": False}.get(args.fix_error_units)
    result = detect(args.store, pipeline_params=_pipeline_params(args.param), fix_error_units=fix)
    return _report(result, args)


@_sigterm_stops_gracefully
def cmd_benchmark(args) -> int:
    from sigray.benchmark import ERROR, OK, PENDING, plot_leaderboard
    from sigray.benchmark import benchmark as run_benchmark

    _check_output_folder(args.output)  # before any work: a refusal leaves nothing behind
    board = run_benchmark(
        args.paths,
        args.store,
        args.labels,
        method=args.method,
        progress=not args.quiet,
        deadline_s=args.deadline,
        ray_options=_ray_options(args),
        new=args.new,
        **_run_settings(args),
    )
    written = [os.path.join(args.output, name) for name in ("leaderboard.csv", "datasets.csv", "leaderboard.png")]
    try:
        os.makedirs(args.output, exist_ok=True)
        board.signals.to_csv(written[0], index=False)
        board.datasets.to_csv(written[1], index=False)
    except OSError as exc:  # the store holds every answer and result: the same command writes them again
        raise InputError(f"cannot write the leaderboard in {args.output}: {exc.strerror or exc}.") from None
    try:
        plot_leaderboard(board, written[2])
    except Exception as exc:  # noqa: BLE001 - the tables are written; a picture is a bonus
        print(f"sigray: warning: no picture {written[2]}: {exc}", file=sys.stderr)
        written.pop()
    if args.json:
        tables = {"signals": board.signals, "datasets": board.datasets}
        records = {key: json.loads(table.to_json(orient="records")) for key, table in tables.items()}
        summary = {"complete": board.complete, "stopped": board.stopped, "method": board.method}
        summary["stores"] = list(board.runs)
        _print_json(args, {**summary, **records, "files": written}, indent=None)
    elif not args.quiet:
        # weighted tp/fp/fn are seconds (Orion's contextual matrix): whole numbers print whole
        number = lambda v: f"{v:.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.3f}"  # noqa: E731
        counts = {"windows": "string", "failed_windows": "string"}
        shown = board.signals.drop(columns=["pipeline", "reason"]).astype(counts).fillna(dict.fromkeys(counts, "-"))
        print(shown.to_string(index=False, float_format=number, na_rep="-"))
        print()
        print(board.datasets.to_string(index=False, float_format=number, na_rep="-"))
        print(_windows_line(board.runs.values()))
        print(f"leaderboard: {', '.join(written)}")
    signals = board.signals
    errors = signals[signals["status"] == ERROR]
    if len(errors):
        print(
            f"sigray: {len(errors)} of {len(signals)} signal(s) not run, each on its ERROR row of "
            f"{written[0]} with why: {', '.join(errors['signal'][:20])}. The first: {errors['reason'].iloc[0]}",
            file=sys.stderr,
        )
    unlabelled = signals[(signals["status"] == OK) & signals["f1"].isna()]
    if len(unlabelled):
        print(
            f"sigray: warning: {len(unlabelled)} signal(s) are not in the labels file and are not scored: "
            f"{', '.join(unlabelled['signal'][:20])}. A signal without known anomalies needs its row too "
            '(signal,events with "[]"; the signal,start,end format cannot list it).',
            file=sys.stderr,
        )
    if board.stopped:  # the benchmark as a whole, then the store it stopped in (its others may not have started)
        pending = int((signals["status"] == PENDING).sum())
        print(
            f"resumable: {pending} of {len(signals)} signal(s) still pending; stopped in {board.result.store}: "
            f"{_windows_done(board.result)}; run the same command to resume."
        )
        return EXIT_RESUMABLE
    if not board.complete:
        print("sigray: incomplete: PENDING signals have windows to answer; run the same command.", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_USAGE if len(errors) == len(signals) else 0


def _windows_line(runs) -> str:
    """What a benchmark's runs asked of the engine and what they found saved (a rerun: all reused)."""
    runs = list(runs)
    total, reused = sum(r.total_windows for r in runs), sum(r.resumed_windows for r in runs)
    generated, failed = sum(r.computed_windows for r in runs), sum(r.failed_windows for r in runs)
    seconds = sum(r.elapsed_s for r in runs)
    return (
        f"windows: {total} in {len(runs)} store(s): {reused} reused, {generated} generated, {failed} failed; "
        f"{seconds:.1f} s."
    )


def _resumable_line(result) -> str:
    return f"resumable: {_windows_done(result)}; run the same command to resume."


def _windows_done(result) -> str:
    done = result.resumed_windows + result.computed_windows
    all_done = done == result.total_windows and not result.unregistered
    post = f", {len(result.signals)} of {result.n_signals} signals post-processed" if all_done else ""
    if result.unregistered:  # their windows are not counted: nobody has made them yet
        post = f" (and {len(result.unregistered)} more signal(s) not windowed yet)"
    return f"{done} of {result.total_windows} windows done{post}"


def _check_output_folder(path: str) -> None:
    """InputError unless ``path`` is a folder, or can become one, we may write in (not made here)."""
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if existing == path and not os.path.isdir(path):
        raise InputError(f"-o {path}: is a file; name a folder for the leaderboard.")
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"-o {path}: cannot write in {existing}; name a folder you can write to.")


def _report(result, args, picture: str | None = None) -> int:
    """Print what a run found first; then draw (a picture that fails is a warning, never
    an error: the work is saved). Exit 75 for a stop, 3 when signals lack results."""
    if result.stopped:
        line = _resumable_line(result)
        if args.json:
            _print_json(args, {**_result_json(result), "stopped": True, "message": line})
        else:
            print(line)
        return EXIT_RESUMABLE
    if args.json:
        _print_json(args, {**_result_json(result), "picture": picture})
    elif not args.quiet:
        _print_result(result)
        if picture:
            print(f"picture: {picture}")
    if getattr(args, "plot_dir", None):
        for line in _plot_all(result.store, args.plot_dir, list(result.signals)):
            print(line, file=sys.stderr if line.startswith("sigray: warning") else sys.stdout)
    for line in _missing_lines(result):
        print(f"sigray: {line}", file=sys.stderr)
    if result.missing:
        return EXIT_INCOMPLETE
    # every signal's windows failed (the run warned, naming them): nothing was detected at all
    return EXIT_ERROR if result.signals and len(result.unanswered) == len(result.signals) else 0


def _missing_lines(result) -> list[str]:
    if not result.missing:
        return []
    return [
        f"incomplete: {len(result.missing)} signal(s) have windows still pending and no results: "
        f"{', '.join(result.missing[:20])}. Finish their windows with `sigray run` naming them (the run's settings)."
    ]


def _plot_all(store: str, directory: str, names: list[str]) -> list[str]:
    """--plot-dir: one PNG per signal, named after it; a picture that cannot be drawn is a warning."""
    import re

    from sigray.plot import plot_from_store

    lines = []
    for name in names:
        out = os.path.join(directory, re.sub(r"[^\w.-]", "_", name) + ".png")
        try:
            path, _ = plot_from_store(store, out, name)
            lines.append(f"picture: {path}")
        except Exception as exc:  # noqa: BLE001 - the results are saved; a picture is a bonus
            lines.append(f"sigray: warning: no picture of {name!r}: {exc}")
    return lines


def _signal_sources(items: list[str]) -> list:
    """CSV paths, or NAME=PATH to name a signal (two pump.csv from different folders)."""
    sources = []
    for item in items:
        name, sep, path = item.partition("=")
        if not os.path.exists(item) and sep and name and os.sep not in name:
            sources.append((name, path))
        else:
            sources.append(item)
    return sources


def _run_settings(args) -> dict:
    settings = {
        "pipeline": args.pipeline,
        "model": args.model,
        "engine": args.engine,
        "engine_options": _key_values(args.engine_option),
        "pipeline_params": _pipeline_params(args.param),
        "max_attempts": args.max_attempts,
        "seed": args.seed,
        "constrained": not args.no_constrain,
        "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker,
        "batch_size": args.batch_size,
        "flush_interval_s": args.flush_interval,
        "lease_timeout_s": args.lease_timeout,
        "load_timeout_s": args.load_timeout,
        "chunk_windows": args.chunk_windows,
        "normal": args.normal,
        "fix_error_units": args.fix_error_units or None,
        "timestamp_unit": getattr(args, "timestamp_unit", None),
    }
    return {k: v for k, v in settings.items() if v is not None}


def _ray_options(args) -> dict:
    options = {"log_to_driver": args.verbose}
    if getattr(args, "quiet", False):  # Ray's "Started a local Ray instance." is information
        options["logging_level"] = logging.WARNING
    if args.num_cpus is not None:
        options["num_cpus"] = args.num_cpus
    if args.num_gpus is not None:
        options["num_gpus"] = args.num_gpus
    return options


def _print_result(result) -> None:
    shared = result.signal_windows - result.total_windows
    sharing = f" ({shared} shared between signals or repeated)" if shared > 0 else ""
    print(
        f"{result.total_windows} windows{sharing}: {result.resumed_windows} reused, {result.computed_windows} "
        f"generated, {result.failed_windows} failed; {result.retries} retries; {result.elapsed_s:.1f} s. "
        f"Store: {result.store}"
    )
    if result.prompt_tokens_mean is not None:
        print(
            f"prompt tokens per window: {result.prompt_tokens_mean:.0f} on average, {result.prompt_tokens_max} at most"
        )
    if result.result_set is not None:
        line = f"result set {result.result_set.id} ({result.result_set.name})"
        changed = ", ".join(f"{key} {_value(old)} \u2192 {_value(new)}" for key, old, new in result.detection_changes)
        if result.reused_results == len(result.signals):
            line += "; results reused from the store" + (f" (settings changed: {changed})" if changed else "")
        else:
            line += f"; post-processing re-run: {changed}" if changed else "; post-processed"
            if result.reused_results:
                line += f" ({result.reused_results} of {len(result.signals)} signals' results reused)"
        print(line)
    table = _anomaly_table(result.anomalies)
    answered = len(result.signals) - len(result.unanswered)
    if len(table):
        print(table.to_string(index=False))
    elif answered and not result.missing and answered == len(result.signals):
        print("no anomalies found.")
    elif answered:  # the missing and unanswered ones are named on stderr
        print(f"no anomalies found in the {answered} signal(s) with answered windows.")
    for name, signal in result.signals.items():
        if signal.failed_windows:
            reasons = "; ".join(f"{count}x {reason}" for reason, count in signal.failure_reasons.items())
            print(
                f"{name}: {len(signal.failed_windows)} window(s) failed and were left out: "
                f"{signal.failed_windows[:10]} ({reasons})"
            )


def _value(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _anomaly_table(anomalies: dict):
    from sigray.reader import Results

    return Results("", None, anomalies, [], {}).table()


def _result_json(result) -> dict:
    return {
        "store": result.store,
        "complete": result.complete,
        "missing_signals": result.missing,
        "windows": result.total_windows,
        "computed": result.computed_windows,
        "resumed": result.resumed_windows,
        "failed": result.failed_windows,
        "retries": result.retries,
        "requeued": result.requeued,
        "workers_replaced": result.workers_replaced,
        "elapsed_s": round(result.elapsed_s, 3),
        "timings": result.timings,
        "prompt_tokens": None
        if result.prompt_tokens_mean is None
        else {"mean": round(result.prompt_tokens_mean, 1), "max": result.prompt_tokens_max},
        "result_set": None
        if result.result_set is None
        else {"id": result.result_set.id, "name": result.result_set.name},
        "detection_changes": [{"setting": k, "from": a, "to": b} for k, a, b in result.detection_changes],
        "signals": {
            name: {
                "anomalies": s.anomalies.to_dict(orient="records"),
                "failed_windows": s.failed_windows,
                "failure_reasons": s.failure_reasons,
                "windows": s.n_windows,
            }
            for name, s in result.signals.items()
        },
    }


@_sigterm_stops_gracefully
def cmd_demo(args) -> int:
    from sigray.demo import run_demo

    settings = {"batch_size": 16, **_run_settings(args)}  # smaller batches: steadier progress on a CPU
    outcome = run_demo(
        args.store,
        args.out,
        max_rows=args.max_rows,
        progress=not (args.quiet or args.json),
        ray_options=_ray_options(args),
        new=args.new,
        **settings,
    )
    if outcome.picture_error:
        print(f"sigray: warning: no picture: {outcome.picture_error}", file=sys.stderr)
    return _report(outcome.result, args, picture=outcome.picture)


# -- reading a store ---------------------------------------------------------------


def cmd_status(args) -> int:
    from sigray.reader import open_store

    status = open_store(args.store).status(args.set)
    if args.json:
        _print_json(args, status)
        return 0
    state = "running" if status["running"] else "not running"
    print(f"{status['store']}: {status['pipeline']} on {status['model']} ({state})")
    print(f"  {status['done']} done, {status['failed']} failed, {status['pending']} pending of {status['windows']}")
    if status["signals_to_add"]:
        print(
            f"  and {status['signals_to_add']} more signal(s) the run is still windowing (their windows are not "
            "counted yet)"
        )
    print(f"  last update: {_when(status['last_update'], status['last_update_age_s'])}")
    rate, eta = status["windows_per_s"], status["eta_s"]
    if status["pending"] == 0:
        print("  ETA: none left")
    elif eta is None:
        print("  ETA: unknown (no recent rate in the store)")
    else:
        moving = "" if status["running"] else " (not running now)"
        print(f"  ETA: {_duration(eta)} at the recent {rate:.2f} windows/s{moving}")
    for reason, count in status["failure_reasons"].items():
        print(f"  failed: {count} x {reason}")
    chosen = status["result_set"]
    print("  result set: " + ("none yet" if chosen is None else f"{chosen['id']} ({chosen['name']})"))
    for s in status["signals"]:
        result = "results saved" if s["has_result"] else "no results yet"
        if s["has_result"] and s["windows"] and s["failed"] == s["windows"]:
            result += ", but no window got a valid answer: they mean nothing"
        print(f"  {s['name']}: {s['done']}/{s['windows']} done, {s['failed']} failed; {result}")
    asked = ", ".join(f"{count} window(s) {answers}" for answers, count in status["attempts_histogram"].items())
    print(f"  answers asked per window: {asked}")
    tokens = status["prompt_tokens"]
    if tokens is not None:
        print(
            f"  prompt tokens per window: {tokens['mean']:.0f} on average, {tokens['max']} at most "
            f"(the last session's {tokens['windows']} answers asked)"
        )
    return 0


def _when(at: float | None, age_s: float | None) -> str:
    if at is None:
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{stamp} ({_duration(age_s)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def cmd_results(args) -> int:
    from sigray.reader import open_store

    reader = open_store(args.store)
    if args.sets:
        return _print_sets(reader)
    results = reader.results(args.set)
    fmt = args.format or _format_of(args.output) or "csv"
    if args.output and not args.format and _format_of(args.output) is None:
        raise InputError(
            f"cannot tell the format of {args.output} from its suffix; "
            "name it .csv, .json or .parquet, or give --format."
        )
    if fmt == "parquet":
        data = _parquet_bytes(results)
    elif fmt == "json":
        data = (json.dumps(results.to_json(), indent=2) + "\n").encode()
    else:
        data = results.table().to_csv(index=False).encode()
    _write_output(args.output, data)
    for line in results.warnings():
        print(f"sigray: {line}", file=sys.stderr)
    if not results.complete:
        return EXIT_INCOMPLETE
    return EXIT_ERROR if results.anomalies and len(results.unanswered) == len(results.anomalies) else 0


def _print_sets(reader) -> int:
    found = reader.result_sets()
    if not found:
        print("no result sets yet: the run has not post-processed any signal.")
        return 0
    for info in reversed(found):
        shown = "  <- shown when --set is not given" if info is found[-1] else ""
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.used)) if info.used else "-"
        print(f"{info.id}  used {used}  {info.name}{shown}")
    return 0


def _write_output(path: str | None, data: bytes) -> None:
    if path:
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


RESULT_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: str | None) -> str | None:
    return RESULT_FORMATS.get(os.path.splitext(path)[1].lower()) if path else None


def _parquet_bytes(results) -> bytes:
    """The anomalies as parquet; whether they are complete, and what was left out, in the
    file's metadata under ``sigray`` (JSON)."""
    import io

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "--format parquet needs pyarrow, which is not installed; install the export extra "
            "(pip install 'sigray[export]'), or use --format csv or json."
        ) from None
    table = pa.Table.from_pandas(results.table(), preserve_index=False)
    summary = {k: v for k, v in results.to_json().items() if k != "anomalies"}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"sigray": json.dumps(summary).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def cmd_evaluate(args) -> int:
    import pandas as pd

    from sigray.evaluate import evaluate, load_labels
    from sigray.reader import open_store

    reader = open_store(args.store)
    labels = load_labels(args.labels)
    scored, incomplete, missing = [], [], []
    for wanted in args.set or [None]:
        results = reader.results(wanted)
        chosen = results.result_set
        if not results.anomalies:  # nothing finished yet: nothing to score, and that is incomplete, not wrong
            incomplete.extend(results.warnings()[:1])
            missing.extend(name for name in results.missing if name not in missing)
            continue
        scores = evaluate(results.anomalies, labels)
        scored.append(scores.assign(result_set=chosen.name if chosen else "none") if args.set else scores)
        incomplete.extend(results.warnings()[:1] if results.missing else [])
        missing.extend(name for name in results.missing if name not in missing)
    table = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame()
    if args.json:
        _print_json(
            args, {"complete": not incomplete, "missing_signals": missing, "scores": table.to_dict("records")}, None
        )
    else:
        print(
            table.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(table) else "nothing to score yet."
        )
    for line in dict.fromkeys(incomplete):
        print(f"sigray: {line} Scores cover the finished signals only.", file=sys.stderr)
    return EXIT_INCOMPLETE if incomplete else 0


def cmd_plot(args) -> int:
    from sigray.evaluate import load_labels
    from sigray.plot import plot_from_store

    labels = load_labels(args.labels) if args.labels else None
    out, finished = plot_from_store(args.store, args.output, args.signal, labels=labels, sets=args.set)
    print(f"picture: {out}")
    if not finished:
        print(
            "sigray: incomplete: the run has not finished this signal; the picture shows no detections. "
            "Run the same command again to finish it.",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return 0


# -- parsing ------------------------------------------------------------------


def _key_values(items: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as JSON when they can be."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}.")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _pipeline_params(items: list[str]) -> dict:
    """``block#1.param=value`` into sigllm's ``{"block#1": {"param": value}}``."""
    params: dict[str, dict] = {}
    for key, value in _key_values(items).items():
        block, _, name = key.rpartition(".")
        if not block:
            raise ConfigError(
                f"--param needs block.param=value (e.g. {_FIND_ANOMALIES}.window_size_portion=0.5), got {key!r}."
            )
        params.setdefault(block, {})[name] = value
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigray",
        description="Resumable SigLLM anomaly detection on Ray with vLLM; every result is kept in a Zarr store.",
        epilog="Exit codes: 0 done, 1 a run error or no valid answer for any window, 2 bad input, settings, model "
        "or store, 3 results incomplete "
        "(some signals not finished: named on stderr), 75 stopped on purpose (run the same command to resume).",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run or resume a SigLLM pipeline over signals")
    run.add_argument(
        "signals", nargs="+", help="CSV files: timestamp,value (or timestamp,0,...,K-1); NAME=PATH names one"
    )
    run.add_argument("--store", required=True, help="the run's store: a directory, or s3://bucket/prefix")
    _add_run_options(run)
    run.add_argument(
        "--timestamp-unit",
        choices=["s", "ms", "us", "ns"],
        default=None,
        help="what numeric timestamps count (default: seconds)",
    )
    run.add_argument("--plot-dir", default=None, metavar="DIR", help="when the run finishes, one PNG per signal here")
    run.set_defaults(command=cmd_run)

    bench = sub.add_parser(
        "benchmark",
        help="run and score a pipeline over folders of signals: a leaderboard per signal and dataset (resumable)",
    )
    bench.add_argument("paths", nargs="+", help="folders of signal CSVs (one per dataset) or CSV files")
    bench.add_argument("--labels", required=True, help="Orion labels CSV: signal,events or signal,start,end")
    bench.add_argument(
        "--store",
        required=True,
        help="the benchmark's store: a directory, or s3://bucket/prefix (a dataset sigllm has parameters for, "
        "e.g. realTweets with a prompter, runs with them in STORE-<dataset>)",
    )
    bench.add_argument("-o", "--output", required=True, metavar="DIR", help="where leaderboard.csv/.png go")
    bench.add_argument(
        "--method", choices=["weighted", "overlap"], default="weighted", help="Orion's contextual scores (weighted)"
    )
    _add_run_options(bench)
    bench.set_defaults(command=cmd_benchmark)

    detect = sub.add_parser(
        "detect", help="post-process a store's answers again with other settings, from the store alone"
    )
    detect.add_argument("store", help="the run's store")
    detect.add_argument(
        "--param",
        action="append",
        metavar="BLOCK.PARAM=VALUE",
        help="a setting after the LLM step, on top of the run's",
    )
    detect.add_argument(
        "--fix-error-units", choices=["on", "off"], default=None, help="detectors: the units fix (default: as the run)"
    )
    detect.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    detect.add_argument("--json", action="store_true", help="print the result as JSON")
    detect.add_argument("--plot-dir", default=None, metavar="DIR", help="one PNG per signal here")
    detect.set_defaults(command=cmd_detect)

    demo = sub.add_parser("demo", help="run the bundled real signal through a real small LLM, draw a picture")
    demo.add_argument("--store", default=os.path.join("runs", "demo"), help="the demo's store (default runs/demo)")
    demo.add_argument("--out", default=os.path.join("runs", "demo.png"), help="the picture to write")
    demo.add_argument("--max-rows", type=int, default=None, help="use only the first N rows (a quicker demo)")
    _add_run_options(demo)
    demo.set_defaults(command=cmd_demo)

    status = sub.add_parser("status", help="a run's progress, read from its store (works while it runs)")
    status.add_argument("store", help="the run's store")
    status.add_argument("--set", default=None, help="the result set to report on (default: the last used)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(command=cmd_status)

    results = sub.add_parser("results", help="a run's anomalies: signal,start,end,severity")
    results.add_argument("store", help="the run's store")
    which = results.add_mutually_exclusive_group()
    which.add_argument("--set", default=None, help="which result set: its id or name (default: the last used)")
    which.add_argument("--sets", action="store_true", help="list the store's result sets")
    results.add_argument(
        "--format",
        choices=["csv", "json", "parquet"],
        default=None,
        help="default: from the suffix of --output, else csv (parquet needs the export extra)",
    )
    results.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    results.set_defaults(command=cmd_results)

    evaluate = sub.add_parser("evaluate", help="score a run's anomalies against labels (Orion's contextual metrics)")
    evaluate.add_argument("store", help="the run's store")
    evaluate.add_argument("--labels", required=True, help="Orion labels CSV: signal,events or signal,start,end")
    evaluate.add_argument("--set", action="append", default=None, help="result set(s) to score; repeat to compare")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(command=cmd_evaluate)

    plot = sub.add_parser("plot", help="draw a signal, forecast and anomalies from its store")
    plot.add_argument("store", help="the run's store")
    plot.add_argument("--signal", default=None, help="which signal (optional when the store holds one)")
    plot.add_argument("-o", "--output", required=True, metavar="PNG", help="the picture to write")
    plot.add_argument("--labels", default=None, help="Orion labels CSV to draw the true anomalies too")
    plot.add_argument("--set", action="append", default=None, help="result set(s) to draw; repeat to compare two")
    plot.set_defaults(command=cmd_plot)
    return parser


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--pipeline", default="mistral_detector", help="sigllm pipeline name or JSON file")
    run.add_argument(
        "--model",
        default=None,
        help="model dir, .gguf file, HF id, or 'smollm2' (default per machine); with --engine openai the served name",
    )
    run.add_argument(
        "--engine",
        default=None,
        help="vllm, openai (a server: --engine-option base_url=URL), test-double, or package.module:Class "
        "(default $SIGRAY_ENGINE, else vllm)",
    )
    run.add_argument("--engine-option", action="append", metavar="KEY=VALUE", help="engine setting (repeatable)")
    run.add_argument("--param", action="append", metavar="BLOCK.PARAM=VALUE", help="pipeline hyperparameter")
    run.add_argument("--normal", default=None, metavar="CSV", help="normal reference signal (one-shot prompters)")
    run.add_argument(
        "--fix-error-units",
        action="store_true",
        help="detectors: compare targets and forecasts in the same units (sigllm 0.2.0 does not; see README)",
    )
    run.add_argument("--workers", type=int, default=1, help="engine workers, one model copy each (default 1)")
    run.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    run.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    run.add_argument("--batch-size", type=int, default=None, help="windows per request to a worker (64; demo 16)")
    run.add_argument("--max-attempts", type=int, default=3, help="answers a window may get before it fails")
    run.add_argument("--seed", type=int, default=0, help="the run's sampling seed (part of its identity)")
    run.add_argument("--flush-interval", type=float, default=5.0, help="seconds between store flushes")
    run.add_argument("--lease-timeout", type=float, default=900.0, help="seconds before a batch is reassigned")
    run.add_argument(
        "--load-timeout", type=float, default=1800.0, help="seconds an engine may take to load before it is replaced"
    )
    run.add_argument("--chunk-windows", type=int, default=4096, help="windows per store chunk (new stores)")
    run.add_argument("--no-constrain", action="store_true", help="no regex constraint on answers")
    run.add_argument("--deadline", type=float, default=None, help="stop gracefully after this many seconds")
    run.add_argument(
        "--new", action="store_true", help="replace what the store holds with a new run (refused while one runs)"
    )
    run.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray cluster")
    run.add_argument("--num-gpus", type=float, default=None, help="GPUs of a local Ray cluster")
    run.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing but errors and warnings (no progress, no results: read them with `sigray results`)",
    )
    run.add_argument("--verbose", action="store_true", help="show the workers' and engines' own logs")
    run.add_argument("--json", action="store_true", help="print the result as JSON")


if __name__ == "__main__":
    sys.exit(main())
