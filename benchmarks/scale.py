"""How a run's driver costs grow with the number of signals (issue 16.5).

    .venv/bin/python benchmarks/scale.py                          # 10, 100, 500 signals of 20,000 rows
    .venv/bin/python benchmarks/scale.py --signals 10 --signals 50 --out runs/scale-small

For each count N: N synthetic signals (``reuse.make_signals``: 5-minute steps, a daily cycle,
noise, spikes; 138 ``mistral_detector`` windows each), the test-double engine (answers in
microseconds, so what is measured is sigray and sigllm around the windows), batch 256:

1. **first run**: every window generated; its phases from the run's own ``--json`` timings
   (planning: reading and checking the signals; preparing the store, the first signals
   windowed; first batch: from the run's start until a worker got the first windows; windows,
   engines' start included, the other signals windowed and finished ones post-processed
   meanwhile; post-processing after);
2. **rerun**: the same command again, everything saved: nothing to compute.

``--tasks never|always`` windows and post-processes every signal in the driver, or in Ray
tasks whatever the CPUs (``SIGRAY_TASKS``; the default, auto, uses tasks only with 4 CPUs to
spare beside the workers), to compare them in one session. ``--plan-memory-mb M`` sets the driver's
budget for preprocessed signals (``SIGRAY_PLAN_MEMORY_MB``, default 1024): past it a signal's
prompts are made again where they are used, so the driver's peak stays near M (issue 16.2):

    .venv/bin/python benchmarks/scale.py --rows 200000 --signals 4 --signals 38 --plan-memory-mb 64

Each run is one ``sigray run`` process timed from outside; its peak RSS (the driver alone,
not Ray's processes) is sampled every 50 ms with psutil. Prints a table and writes
``scale.json`` and ``scale.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.reuse import make_signals  # noqa: E402


def _timed_run(paths: list[str], store: str, env: dict | None = None) -> dict:
    """One `sigray run --json` process: wall time, the driver's peak RSS, the run's own figures."""
    import psutil

    command = [sys.executable, "-m", "sigray.cli", "run", *paths, "--store", store, "--engine", "test-double"]
    command += ["--batch-size", "256", "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    peak = [0]

    def sample() -> None:
        driver = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak[0] = max(peak[0], driver.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)  # a sampling period

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"sigray failed ({process.returncode}): {err[-2000:]}")
    result = json.loads(out[out.index("{") :])
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak[0] / 2**20),
        "windows": result["windows"],
        "generated": result["computed"],
        **{k: round(v, 1) for k, v in result["timings"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, action="append", help="signal counts (repeat; default 10, 100, 500)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument(
        "--tasks",
        choices=["auto", "always", "never"],
        default="auto",
        help="SIGRAY_TASKS: window and post-process in Ray tasks (always), in the driver (never), or by CPUs (auto)",
    )
    parser.add_argument("--plan-memory-mb", type=float, help="SIGRAY_PLAN_MEMORY_MB for the runs (default 1024)")
    args = parser.parse_args()
    env = {"SIGRAY_TASKS": args.tasks}
    if args.plan_memory_mb is not None:
        env["SIGRAY_PLAN_MEMORY_MB"] = str(args.plan_memory_mb)
    counts = args.signals or [10, 100, 500]
    os.makedirs(args.out, exist_ok=True)
    paths = make_signals(os.path.join(args.out, "signals"), max(counts), args.rows)
    rows = []
    for n in counts:
        store = os.path.join(args.out, f"store-{n}")
        shutil.rmtree(store, ignore_errors=True)
        first = _timed_run(paths[:n], store, env)
        rerun = _timed_run(paths[:n], store, env)
        windows_per_s = first["windows"] / first["wall_s"]
        rows.append({"signals": n, "first": first, "rerun": rerun, "windows_per_s": round(windows_per_s, 1)})
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(
        "| signals | windows | first run | planning | first batch | windows phase | post-processing after | rerun "
        "| peak RSS |"
    )
    print("|---" * 9 + "|")
    for row in rows:
        first, rerun = row["first"], row["rerun"]
        first_batch = round(first["planning_s"] + first.get("first_batch_s", float("nan")), 1)
        print(
            f"| {row['signals']} | {first['windows']:,} | {first['wall_s']} s | {first['planning_s']} s | "
            f"{first_batch} s | {first['windows_s']} s | {first['post_processing_s']} s | {rerun['wall_s']} s | "
            f"{first['peak_rss_mb']} MB (rerun {rerun['peak_rss_mb']} MB) |"
        )
    _plot(rows, os.path.join(args.out, "scale.png"))


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [row["signals"] for row in rows]
    fig, (times, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in [("wall_s", "first run"), ("planning_s", "planning"), ("windows_s", "windows phase")]:
        times.plot(n, [row["first"][key] for row in rows], marker="o", label=label)
    times.plot(n, [row["first"]["post_processing_s"] for row in rows], marker="o", label="post-processing after")
    times.plot(n, [row["rerun"]["wall_s"] for row in rows], marker="o", label="rerun (nothing to do)")
    times.set_xlabel("signals")
    times.set_ylabel("seconds")
    times.legend()
    memory.plot(n, [row["first"]["peak_rss_mb"] for row in rows], marker="o", label="first run")
    memory.plot(n, [row["rerun"]["peak_rss_mb"] for row in rows], marker="o", label="rerun")
    memory.set_xlabel("signals")
    memory.set_ylabel("driver peak RSS (MB)")
    memory.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
