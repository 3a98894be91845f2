"""The ``sigray`` command: run, demo, status, results, evaluate, plot. Everything here calls the public API."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import time

from sigray.errors import ConfigError, InputError, SigrayError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on purpose, run the same command to resume


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.command(args)
    except SigrayError as exc:
        print(f"sigray: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if _is_usage_error(exc) else EXIT_ERROR
    except KeyboardInterrupt:
        print("sigray: interrupted; run the same command to resume.", file=sys.stderr)
        return 130


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

    settings = _run_settings(args)
    if args.new:
        _remove_store(args.store)
    progress = _ProgressPrinter(quiet=args.quiet or args.json)
    result = run(
        args.signals,
        args.store,
        on_progress=progress,
        deadline_s=args.deadline,
        ray_options=_ray_options(args),
        **settings,
    )
    progress.close()
    done = result.resumed_windows + result.computed_windows
    if result.stopped:
        print(f"resumable: {done} of {result.total_windows} windows done; run the same command to resume.")
        return EXIT_RESUMABLE
    pictures = _plot_all(args.store, args.plot_dir, list(result.signals)) if args.plot_dir else []
    if args.json:
        print(json.dumps({**_result_json(result), "pictures": pictures}, indent=2))
    elif not args.quiet:
        _print_result(result)
        for picture in pictures:
            print(f"picture: {picture}")
    return 0


def _plot_all(store: str, directory: str, names: list[str]) -> list[str]:
    """--plot-dir: one PNG per signal, named after it."""
    import re

    from sigray.plot import plot_from_store

    os.makedirs(directory, exist_ok=True)
    return [
        plot_from_store(store, os.path.join(directory, re.sub(r"[^\w.-]", "_", name) + ".png"), name) for name in names
    ]


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
        "chunk_windows": args.chunk_windows,
        "normal": args.normal,
        "fix_error_units": args.fix_error_units or None,
    }
    return {k: v for k, v in settings.items() if v is not None}


def _ray_options(args) -> dict:
    options = {"log_to_driver": args.verbose}
    if args.num_cpus is not None:
        options["num_cpus"] = args.num_cpus
    if args.num_gpus is not None:
        options["num_gpus"] = args.num_gpus
    return options


def _remove_store(path: str) -> None:
    """--new: delete an existing sigray store (and only a sigray store)."""
    if not os.path.exists(path):
        return
    from sigray.store import RunStore

    RunStore.open(path, read_only=True)  # raises StoreError if it is not a sigray store
    shutil.rmtree(path)


def _print_result(result) -> None:
    from sigray.report import anomalies_frame

    print(
        f"{result.total_windows} windows: {result.computed_windows} computed now, "
        f"{result.resumed_windows} resumed from the store, {result.failed_windows} failed; "
        f"{result.retries} retries; {result.elapsed_s:.1f} s. Store: {result.store}"
    )
    table = anomalies_frame(result.anomalies)
    print(table.to_string(index=False) if len(table) else "no anomalies found.")
    for name, signal in result.signals.items():
        if signal.failed_windows:
            print(
                f"{name}: {len(signal.failed_windows)} window(s) failed and were left out: {signal.failed_windows[:10]}"
            )


def _result_json(result) -> dict:
    return {
        "store": result.store,
        "windows": result.total_windows,
        "computed": result.computed_windows,
        "resumed": result.resumed_windows,
        "failed": result.failed_windows,
        "retries": result.retries,
        "elapsed_s": round(result.elapsed_s, 3),
        "signals": {
            name: {
                "anomalies": s.anomalies.to_dict(orient="records"),
                "failed_windows": s.failed_windows,
                "windows": s.n_windows,
            }
            for name, s in result.signals.items()
        },
    }


class _ProgressPrinter:
    """A bar on a terminal; a log line every few seconds otherwise; nothing when quiet."""

    def __init__(self, quiet: bool, every_s: float = 5.0):
        self.quiet = quiet
        self.every_s = every_s
        self.last = 0.0
        self.bar = None

    def __call__(self, p) -> None:
        if self.quiet:
            return
        if sys.stderr.isatty():
            self._bar(p)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            left = p.total - p.done - p.failed
            eta = f"{left / p.windows_per_s:.0f} s" if p.windows_per_s else "unknown"
            print(
                f"progress: {p.done}/{p.total} done, {p.failed} failed, {p.in_flight} in flight, "
                f"{p.windows_per_s:.1f} windows/s, ETA {eta}, {p.retries} retries",
                file=sys.stderr,
                flush=True,
            )

    def _bar(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total, unit="win", desc="windows", initial=p.done + p.failed)
        self.bar.n = p.done + p.failed
        self.bar.set_postfix(failed=p.failed, retries=p.retries, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@_sigterm_stops_gracefully
def cmd_demo(args) -> int:
    from sigray.demo import run_demo

    settings = {"batch_size": 16, **_run_settings(args)}  # smaller batches: steadier progress on a CPU
    if args.new:
        _remove_store(args.store)
    progress = _ProgressPrinter(quiet=args.quiet or args.json)
    outcome = run_demo(
        args.store, args.out, max_rows=args.max_rows, on_progress=progress, ray_options=_ray_options(args), **settings
    )
    progress.close()
    result = outcome.result
    if result.stopped:
        done = result.resumed_windows + result.computed_windows
        print(f"resumable: {done} of {result.total_windows} windows done; run the same command to resume.")
        return EXIT_RESUMABLE
    if args.json:
        print(json.dumps({**_result_json(result), "picture": outcome.picture}, indent=2))
        return 0
    if not args.quiet:
        _print_result(result)
        print(f"picture: {outcome.picture}")
    return 0


# -- status / results ---------------------------------------------------------------


def cmd_status(args) -> int:
    from sigray.report import store_status

    status = store_status(args.store)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    state = "running" if status["running"] else "not running"
    print(f"{status['store']}: {status['pipeline']} on {status['model']} ({state})")
    print(f"  {status['done']} done, {status['failed']} failed, {status['pending']} pending of {status['windows']}")
    print(f"  last update: {_when(status['last_update'], status['last_update_age_s'])}")
    rate, eta = status["windows_per_s"], status["eta_s"]
    if status["pending"] == 0:
        print("  ETA: none left")
    elif eta is None:
        print("  ETA: unknown (no recent rate in the store)")
    else:
        moving = "" if status["running"] else " (not running now)"
        print(f"  ETA: {_duration(eta)} at the recent {rate:.2f} windows/s{moving}")
    for s in status["signals"]:
        print(f"  {s['name']}: {s['done']}/{s['windows']} done, {s['failed']} failed")
    print(f"  answers per window: {status['attempts_histogram']}")
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
    from sigray.report import anomalies_frame, store_results

    table = anomalies_frame(store_results(args.store))
    fmt = args.format or _format_of(args.output) or "csv"
    if fmt == "parquet":
        data = _parquet_bytes(table)
    elif fmt == "json":
        data = (table.to_json(orient="records") + "\n").encode()
    else:
        data = table.to_csv(index=False).encode()
    if args.output:
        try:
            with open(args.output, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror or exc}.") from None
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


RESULT_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: str | None) -> str | None:
    return RESULT_FORMATS.get(os.path.splitext(path)[1].lower()) if path else None


def _parquet_bytes(table) -> bytes:
    import io

    try:
        import pyarrow  # noqa: F401 - only to know it is there
    except ImportError:
        raise ConfigError(
            "--format parquet needs pyarrow, which is not installed; install the export extra "
            "(pip install 'sigray[export]'), or use --format csv or json."
        ) from None
    buffer = io.BytesIO()
    table.to_parquet(buffer, engine="pyarrow", index=False)
    return buffer.getvalue()


def cmd_evaluate(args) -> int:
    from sigray.evaluate import evaluate, load_labels
    from sigray.report import store_results

    scores = evaluate(store_results(args.store), load_labels(args.labels))
    if args.json:
        print(scores.to_json(orient="records"))
    else:
        print(scores.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_plot(args) -> int:
    from sigray.evaluate import load_labels
    from sigray.plot import plot_from_store

    labels = load_labels(args.labels) if args.labels else None
    out = plot_from_store(args.store, args.output, args.signal, labels=labels)
    print(f"picture: {out}")
    return 0


# -- parsing ------------------------------------------------------------------


def _key_values(items: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as JSON when they can be."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"sigray: error: expected key=value, got {item!r}")
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
            raise SystemExit(f"sigray: error: --param needs block.param=value, got {key!r}")
        params.setdefault(block, {})[name] = value
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigray",
        description="Resumable SigLLM anomaly detection on Ray with vLLM; every result is kept in a Zarr store.",
        epilog="Exit codes: 0 done, 1 a run error, 2 bad input, settings, model or store, "
        "75 stopped on purpose (run the same command to resume).",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run or resume a SigLLM pipeline over signals")
    run.add_argument("signals", nargs="+", help="CSV files with timestamp,value columns")
    run.add_argument("--store", required=True, help="the run's Zarr store directory")
    _add_run_options(run)
    run.add_argument("--plot-dir", default=None, metavar="DIR", help="when the run finishes, one PNG per signal here")
    run.set_defaults(command=cmd_run)

    demo = sub.add_parser("demo", help="run the bundled real signal through a real small LLM, draw a picture")
    demo.add_argument("--store", default=os.path.join("runs", "demo"), help="the demo's store (default runs/demo)")
    demo.add_argument("--out", default=os.path.join("runs", "demo.png"), help="the picture to write")
    demo.add_argument("--max-rows", type=int, default=None, help="use only the first N rows (a quicker demo)")
    _add_run_options(demo)
    demo.set_defaults(command=cmd_demo)

    status = sub.add_parser("status", help="a run's progress, read from its store (works while it runs)")
    status.add_argument("store", help="the run's store")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(command=cmd_status)

    results = sub.add_parser("results", help="a finished run's anomalies: signal,start,end,severity")
    results.add_argument("store", help="the run's store")
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
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(command=cmd_evaluate)

    plot = sub.add_parser("plot", help="draw a finished run's signal, forecast and anomalies from its store")
    plot.add_argument("store", help="the run's store")
    plot.add_argument("--signal", default=None, help="which signal (optional when the store holds one)")
    plot.add_argument("-o", "--output", required=True, metavar="PNG", help="the picture to write")
    plot.add_argument("--labels", default=None, help="Orion labels CSV to draw the true anomalies too")
    plot.set_defaults(command=cmd_plot)
    return parser


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--pipeline", default="mistral_detector", help="sigllm pipeline name or JSON file")
    run.add_argument("--model", default=None, help="model dir, .gguf file, HF id, or 'smollm2' (default per machine)")
    run.add_argument("--engine", default="vllm", help="vllm, test-double, or package.module:Class")
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
    run.add_argument("--chunk-windows", type=int, default=4096, help="windows per store chunk (new stores)")
    run.add_argument("--no-constrain", action="store_true", help="no regex constraint on answers")
    run.add_argument("--deadline", type=float, default=None, help="stop gracefully after this many seconds")
    run.add_argument("--new", action="store_true", help="delete an existing store at --store first")
    run.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray cluster")
    run.add_argument("--num-gpus", type=float, default=None, help="GPUs of a local Ray cluster")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--verbose", action="store_true", help="show the workers' and engines' own logs")
    run.add_argument("--json", action="store_true", help="print the result as JSON")


if __name__ == "__main__":
    sys.exit(main())
