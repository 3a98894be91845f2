"""Run sigray over a directory of signals on an existing Ray cluster, from Python.

    python cluster/driver.py /shared/signals --store-root /shared/runs/nab --workers 8
    python cluster/driver.py /shared/signals --store-root /shared/runs/nab --batch-signals 50 \\
        --model /shared/models/Mistral-7B-Instruct-v0.2 --set engine_options='{"max_model_len": 4096}'

It connects with ``ray.init(address=...)`` (``auto``: ``RAY_ADDRESS``, or the cluster started on this
machine with ``ray start``), then calls the public API, ``sigray.run(signals, store, **settings)``, once
per batch of signals, and prints each batch's anomalies. With token authentication on, the driver's
environment needs ``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``); see cluster/README.md. Running it again resumes every batch from its store.

One store for all signals (the default) or one per batch of ``--batch-signals`` signals:

- One store, one ``sigray.run``: a single queue of windows across every signal keeps every GPU busy to
  the end (a long signal never leaves the others idle), and the engines start once. This is the right
  choice for a fixed set of signals.
- A store per batch: a store's fingerprint covers the bytes of every signal in it, so a store can never
  take another signal; batches bound what a bad or changed file refuses, give finished results for the
  first batches while later ones run, and keep the driver's plan (every window's prompt) small. Each
  ``sigray.run`` starts its engines again (about a minute for a 7B model), so batches should hold
  hours of work, not minutes. Batches are cut from the sorted file names: run again with the same
  files to resume; put new files in a new directory with a new ``--store-root``.

The stores are directories on a file system every node sees (the coordinator, which writes the store,
may run on any node).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("signals_dir", help="directory of signal CSVs (timestamp,value)")
    parser.add_argument("--pattern", default="*.csv", help="which files of the directory (default *.csv)")
    parser.add_argument("--store-root", required=True, help="directory that holds the run's store(s)")
    parser.add_argument(
        "--batch-signals", type=int, default=0, help="signals per store; 0 (default): one store for all"
    )
    parser.add_argument("--address", default="auto", help="Ray cluster to connect to (default auto)")
    parser.add_argument("--pipeline", default="mistral_detector")
    parser.add_argument("--model", default=None, help="model dir, .gguf file or HF id (default: sigray's)")
    parser.add_argument("--engine", default="vllm", help="vllm, test-double, or package.module:Class")
    parser.add_argument("--workers", type=int, default=1, help="engine workers, e.g. one per GPU")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="e.g. 2 with tensor_parallel_size=2")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="any other sigray.RunConfig field, e.g. batch_size=128 or engine_options='{\"tensor_parallel_size\": 2}'",
    )
    return parser


def _settings(args: argparse.Namespace) -> dict:
    settings = {"pipeline": args.pipeline, "engine": args.engine, "workers": args.workers}
    if args.model is not None:
        settings["model"] = args.model
    if args.gpus_per_worker is not None:
        settings["gpus_per_worker"] = args.gpus_per_worker
    for item in args.set:
        field, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"driver.py: --set needs FIELD=JSON, got {item!r}")
        try:
            settings[field] = json.loads(text)
        except json.JSONDecodeError:
            settings[field] = text  # a bare string, e.g. --set pipeline=mistral_prompter_0shot
    return settings


def _batches(paths: list[str], size: int) -> list[tuple[str, list[str]]]:
    """(store name, signal paths): one store for all, or fixed batches of the sorted paths."""
    if size <= 0:
        return [("all", paths)]
    return [(f"batch-{i // size:04d}", paths[i : i + size]) for i in range(0, len(paths), size)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.signals_dir, args.pattern)))
    if not paths:
        print(f"driver.py: no files match {os.path.join(args.signals_dir, args.pattern)}", file=sys.stderr)
        return 2
    settings = _settings(args)

    import pandas as pd
    import ray

    import sigray

    ray.init(address=args.address, log_to_driver=False)
    failed = False
    for name, batch in _batches(paths, args.batch_signals):
        store = os.path.join(args.store_root, name)
        try:
            result = sigray.run(batch, store, **settings)
        except sigray.SigrayError as exc:  # bad input, settings or store: this batch only, the others go on
            print(f"{store}: {exc}", file=sys.stderr)
            failed = True
            continue
        done = result.resumed_windows + result.computed_windows
        if result.stopped:  # SIGTERM: flushed and resumable; run the driver again
            print(f"{store}: stopped with {done} of {result.total_windows} windows done; run again to resume.")
            return 75
        print(
            f"{store}: {len(batch)} signals, {result.total_windows} windows ({result.computed_windows} computed, "
            f"{result.resumed_windows} resumed, {result.failed_windows} failed) in {result.elapsed_s:.1f} s"
        )
        frames = [frame.assign(signal=signal) for signal, frame in result.anomalies.items()]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["signal"])
        print(table[["signal", "start", "end", "severity"]].to_string(index=False) if len(table) else "no anomalies.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
