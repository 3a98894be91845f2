"""Checkpoint cost: what write-behind saving costs a run, and what a SIGKILL loses.

    .venv/bin/python benchmarks/checkpoint.py --out runs/checkpoint

1. **Cost**: the same run (NAB ``nyc_taxi`` aggregated hourly, ``mistral_detector``, 5,020
   windows) with the store flushed every 5, 1 and 0.2 s, against the store written once at
   the end (the coordinator keeps everything in memory until the run finishes: the
   "store off" baseline). The engine is the test double with ``--batch-delay-s`` per batch
   standing for GPU time, so the only difference between the runs is the saving. Rounds
   are interleaved (each round runs every setting once) and ``--rounds`` of them are kept.
2. **Work lost on SIGKILL**: for each flush interval, ``sigray run`` as a real process is
   SIGKILLed with its whole local Ray cluster ``--kill-after-s`` after its first window was
   saved; lost work = windows the engine had generated (its log) minus windows done in
   the store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")  # NAB, MIT: see its README
SIGNAL = os.path.join(DATA, "nab_orion", "nyc_taxi.csv")
AGGREGATE = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"
HOURLY = {AGGREGATE: {"interval": 3600}}  # nyc_taxi hourly: 5,020 windows
END_ONLY = 1e7  # a flush interval longer than any run: saved once, at the end


def cost(args) -> list[dict]:
    import sigray

    engine_options = {"delay_s": args.batch_delay_s}
    settings = dict(engine="test-double", engine_options=engine_options, workers=2, batch_size=args.batch_size)
    settings["pipeline_params"] = HOURLY
    rows = []
    for round_ in range(args.rounds):
        for interval in [END_ONLY, *args.intervals]:
            store = tempfile.mkdtemp(prefix="cost-", dir=args.out)
            os.rmdir(store)
            started = time.perf_counter()
            result = sigray.run([SIGNAL], store, flush_interval_s=interval, store_lease_s=interval + 60, **settings)
            rows.append(
                {
                    "round": round_,
                    "flush_interval_s": None if interval == END_ONLY else interval,
                    "wall_s": time.perf_counter() - started,
                    "windows_per_s": result.windows_per_s,
                    "windows": result.total_windows,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def work_lost(args) -> list[dict]:
    from sigray.store import DONE, RunStore
    from sigray.testing.processes import kill_session, reap_orphans, start_cli

    rows = []
    for interval in args.intervals_lost:
        for attempt in range(args.kills):
            work = tempfile.mkdtemp(prefix="lost-", dir=args.out)
            store, log = os.path.join(work, "run"), os.path.join(work, "generated.log")
            ray_tmp = tempfile.mkdtemp(prefix="sr-ck-")
            cli_args = [
                "run", SIGNAL, "--store", store, "--engine", "test-double", "--param", f"{AGGREGATE}.interval=3600",
                "--engine-option", f"delay_s={args.batch_delay_s}", "--engine-option", f"log_path={log}",
                "--workers", "2", "--batch-size", str(args.batch_size),
                "--flush-interval", str(interval), "--quiet",
            ]  # fmt: skip
            process = start_cli(cli_args, ray_tmp)
            try:
                first_saved = _wait_for_first_save(store, process)
                time.sleep(args.kill_after_s + attempt * interval / args.kills)  # spread kills over the interval
                kill_session(process)
            finally:
                reap_orphans(ray_tmp)
            with open(log) as f:
                generated = len(set(f.read().splitlines()))
            status, _ = RunStore.open(store, read_only=True).read_state()
            done = int((status == DONE).sum())
            rows.append(
                {
                    "flush_interval_s": interval,
                    "killed_after_s": time.monotonic() - first_saved,
                    "generated": generated,
                    "saved": done,
                    "lost": generated - done,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _wait_for_first_save(store: str, process) -> float:
    from sigray.errors import StoreError
    from sigray.store import DONE, RunStore

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended early: {process.stdout.read().decode()[-2000:]}")
        try:
            status, _ = RunStore.open(store, read_only=True).read_state()
            if (status == DONE).any():
                return time.monotonic()
        except StoreError:
            pass  # not created yet
        time.sleep(0.05)  # polling interval of an observer
    raise RuntimeError("the run saved nothing in 180 s")


def summarize(costs: list[dict], lost: list[dict]) -> None:
    by: dict = {}
    for row in costs:
        by.setdefault(row["flush_interval_s"], []).append(row)
    base = by[None]
    base_rate = statistics.median(r["windows_per_s"] for r in base)
    base_wall = statistics.median(r["wall_s"] for r in base)
    print(
        "\n| flush interval | windows/s (median) | store on / store off (throughput) | wall s (median) | wall ratio |"
    )
    print("|---|---|---|---|---|")
    for interval, rows in by.items():
        rate = statistics.median(r["windows_per_s"] for r in rows)
        wall = statistics.median(r["wall_s"] for r in rows)
        label = "end only (store off)" if interval is None else f"{interval} s"
        print(f"| {label} | {rate:,.0f} | {base_rate / rate:.3f} | {wall:.1f} | {wall / base_wall:.3f} |")
    print("\n| flush interval | kills | windows lost per kill: median (max) | as seconds of generation: median (max) |")
    print("|---|---|---|---|")
    groups: dict = {}
    for row in lost:
        groups.setdefault(row["flush_interval_s"], []).append(row)
    for interval, rows in groups.items():
        losses = [r["lost"] for r in rows]
        # generation rate of the killed run: generated windows over its life since the first save
        seconds = [r["lost"] / (r["generated"] / (r["killed_after_s"] + 1e-9)) for r in rows]
        print(
            f"| {interval} s | {len(rows)} | {statistics.median(losses):.0f} ({max(losses)}) "
            f"| {statistics.median(seconds):.2f} ({max(seconds):.2f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-delay-s", type=float, default=0.2, help="test-double time per batch (GPU time)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--intervals", type=float, nargs="+", default=[5.0, 1.0, 0.2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intervals-lost", type=float, nargs="+", default=[0.2, 0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per flush interval")
    parser.add_argument("--kill-after-s", type=float, default=4.0)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-lost", action="store_true")
    parser.add_argument("--out", default="runs/checkpoint")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    costs = [] if args.skip_cost else cost(args)
    lost = [] if args.skip_lost else work_lost(args)
    with open(os.path.join(args.out, "checkpoint.json"), "w") as f:
        json.dump({"cost": costs, "lost": lost, "args": vars(args)}, f, indent=1)
    if costs:
        summarize(costs, lost)
    elif lost:
        summarize([{"flush_interval_s": None, "windows_per_s": 1, "wall_s": 1}], lost)


if __name__ == "__main__":
    main()
