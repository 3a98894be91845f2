"""The tuning loop: one full run, then reruns that change only what follows the LLM step.

    .venv/bin/python benchmarks/reuse.py                       # 200 signals of 20,000 rows, test double
    .venv/bin/python benchmarks/reuse.py --signals 20 --rows 20000

1. **Full run**: ``mistral_detector`` over N synthetic signals (5-minute steps; a daily cycle,
   noise and a few spikes), test-double engine: every window generated.
2. **A detection setting changed** (``find_anomalies#1.window_size_portion`` 0.3 -> 0.5):
   the same command with one ``--param``; windows generated (expected 0) and wall time.
3. **The same again**: nothing to generate, nothing to post-process (results saved).
4. **Extended signals**: each signal gets 10% more rows; windows generated vs reused.

Prints one table and writes ``reuse.json`` under ``--out``. Wall times are whole ``sigray run``
processes (``/usr/bin/time``-style, from outside), so they include Python's start and planning.

``--extension-table``: instead, for each NAB signal in ``tests/data/nab_orion``, how many windows of
the whole signal the first 1/1.1 of it already had (planning only, no engine), at 6-hour and 1-hour
aggregation: the README's table of when an extended signal keeps its answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd

FIND = "orion.primitives.timeseries_anomalies.find_anomalies#1"


def make_signals(folder: str, n: int, rows: int, extend: float = 0.0) -> list[str]:
    """N synthetic signals (seeded), each ``rows`` long, or ``rows * (1 + extend)``: the same rows, then more."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    longest, total = int(rows * 1.1), int(rows * (1 + extend))
    for k in range(n):
        rng = np.random.default_rng(k)
        t = np.arange(longest)
        daily = 10 * np.sin(2 * np.pi * t / 288 + rng.uniform(0, 6))
        values = 50 + daily + rng.normal(0, 1, longest)
        for spike in rng.integers(0, longest, 3):
            values[spike] += rng.uniform(20, 40)
        path = os.path.join(folder, f"signal_{k:03d}.csv")
        frame = pd.DataFrame({"timestamp": 1_400_000_000 + 300 * t, "value": np.round(values, 3)})
        frame.iloc[:total].to_csv(path, index=False)
        paths.append(path)
    return paths


def sigray_run(paths: list[str], store: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "sigray.cli", "run", *paths, "--store", store, "--engine", "test-double"]
    command += ["--batch-size", "256", "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sigray failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    return {
        "wall_s": round(wall, 1),
        "windows": result["windows"],
        "generated": result["computed"],
        "reused": result["resumed"],
        "changes": result["detection_changes"],
    }


def extension_table() -> None:
    import glob
    import warnings

    from sigray.config import RunConfig
    from sigray.errors import SigrayError
    from sigray.plan import make_plan

    warnings.simplefilter("ignore")
    aggregate = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"
    print("| signal | aggregation | windows (short -> extended) | reused |")
    print("|---|---|---|---|")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "nab_orion")
    for path in sorted(glob.glob(os.path.join(folder, "*.csv"))):
        name = os.path.basename(path)[: -len(".csv")]
        if name.startswith("anomalies"):
            continue
        whole = pd.read_csv(path)
        short = whole.iloc[: int(len(whole) / 1.1)]
        for label, interval in (("6 h", 21600), ("1 h", 3600)):
            config = RunConfig(
                store="unused", engine="test-double", pipeline_params={aggregate: {"interval": interval}}
            )
            try:
                before = make_plan(config, [(name, short)]).plans[0]
                after = make_plan(config, [(name, whole)]).plans[0]
            except SigrayError:
                print(f"| {name} | {label} | too short | |")
                continue
            known = {r.key for r in before.requests}
            reused = sum(r.key in known for r in after.requests)
            print(
                f"| {name} | {label} | {before.n_windows:,} -> {after.n_windows:,} | {reused / after.n_windows:.0%} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", default="runs/reuse")
    parser.add_argument("--extension-table", action="store_true", help="the NAB extension table only")
    args = parser.parse_args()
    if args.extension_table:
        extension_table()
        return
    shutil.rmtree(args.out, ignore_errors=True)
    store = os.path.join(args.out, "store")
    signals = make_signals(os.path.join(args.out, "signals"), args.signals, args.rows)
    rows = {"full run": sigray_run(signals, store, [])}
    tuned = ["--param", f"{FIND}.window_size_portion=0.5"]
    rows["window_size_portion 0.3 -> 0.5"] = sigray_run(signals, store, tuned)
    rows["the same again"] = sigray_run(signals, store, tuned)
    longer = make_signals(os.path.join(args.out, "extended"), args.signals, args.rows, extend=0.1)
    rows["every signal +10% rows"] = sigray_run(longer, store, tuned)
    full = rows["full run"]["wall_s"]
    print(f"{args.signals} signals x {args.rows:,} rows, mistral_detector, test-double engine, batch 256")
    print("| run | windows | generated | reused | wall | / full run |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['windows']:,} | {row['generated']:,} | {row['reused']:,} | {row['wall_s']} s "
            f"| {row['wall_s'] / full:.3f} |"
        )
    with open(os.path.join(args.out, "reuse.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
