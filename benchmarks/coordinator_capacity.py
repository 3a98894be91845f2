"""Coordinator capacity: the windows/s one coordinator sustains when engines cost nothing.

    .venv/bin/python benchmarks/coordinator_capacity.py --out runs/capacity

The real ``Coordinator`` actor (store on, flushing every second) serves simulated workers
that answer instantly: each leases a batch, prefetches the next as a real worker does,
and reports canned valid answers (10 samples of 5 values a window, as a detector's).
Simulated workers are async loops spread over ``--hosts`` Ray actor processes, each with
its own worker id and a fake GPU, so the coordinator sees as many workers as a cluster
of that size would show it. Two sweeps: workers x batch size on ``--windows`` windows,
then the number of windows at the best batch size. Writes ``capacity.json`` and
``capacity.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.synthetic import HORIZON, N_SAMPLES, build_store, canned_answers  # noqa: E402
from sigray.coordinator import Coordinator, CoordinatorSettings  # noqa: E402
from sigray.messages import BatchReport  # noqa: E402


class SimulatedWorkers:
    """``k`` zero-cost workers in one process, each an async loop with its own id."""

    def __init__(self, coordinator, host: int):
        self.coordinator = coordinator
        self.host = host
        values = np.random.default_rng(host).integers(0, 1000, (1, N_SAMPLES, HORIZON)).astype(np.float32)
        self.answer = canned_answers(values)[0]
        self.value = values[0]

    async def serve(self, k: int) -> int:
        counts = await asyncio.gather(*(self._one(f"sim-{self.host}-{i}") for i in range(k)))
        return sum(counts)

    async def _one(self, worker_id: str) -> int:
        done = 0
        pending = self.coordinator.lease_batch.remote(worker_id)
        while True:
            batch = await pending
            if batch is None:
                return done
            pending = self.coordinator.lease_batch.remote(worker_id)  # prefetch, as a real worker
            k = len(batch.windows)
            values = np.broadcast_to(self.value, (k, N_SAMPLES, HORIZON))
            report = BatchReport(batch.lease_id, worker_id, batch.windows, [self.answer] * k, values, [""] * k)
            self.coordinator.report.remote(report)
            done += k


def one_run(template: str, workers: int, batch_size: int, hosts: int, flush_s: float) -> dict:
    import ray

    store = tempfile.mkdtemp(prefix="capacity-", dir=os.path.dirname(template))
    os.rmdir(store)
    shutil.copytree(template, store)
    settings = CoordinatorSettings(store, "capacity", 60.0, batch_size, 3, 0, flush_s, 900.0, (0,))
    coordinator = ray.remote(Coordinator).options(num_cpus=0).remote(settings)
    ray.get(coordinator.progress.remote())  # started: its store read is not timed
    hosts = min(hosts, workers)
    shares = [workers // hosts + (i < workers % hosts) for i in range(hosts)]
    actors = [
        ray.remote(SimulatedWorkers).options(num_cpus=0, num_gpus=share).remote(coordinator, i)
        for i, share in enumerate(shares)
    ]
    ray.get([a.__ray_ready__.remote() for a in actors])
    start = time.perf_counter()
    served = ray.get([a.serve.remote(share) for a, share in zip(actors, shares)])
    final = ray.get(coordinator.wait_finished.remote())  # includes the last flush
    elapsed = time.perf_counter() - start
    for actor in [*actors, coordinator]:
        ray.kill(actor)
    shutil.rmtree(store)
    assert final.done == final.total == sum(served), (final, served)
    return {
        "workers": workers,
        "batch_size": batch_size,
        "windows": final.total,
        "seconds": elapsed,
        "windows_per_s": final.total / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--scale-windows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--scale-workers", type=int, default=16)
    parser.add_argument("--hosts", type=int, default=2, help="processes the simulated workers share")
    parser.add_argument("--flush-interval-s", type=float, default=1.0)
    parser.add_argument("--out", default="runs/capacity")
    parser.add_argument("--plot-only", action="store_true", help="draw capacity.json of an earlier run again")
    args = parser.parse_args()
    if args.plot_only:
        with open(os.path.join(args.out, "capacity.json")) as f:
            saved = json.load(f)
        plot(saved["sweep"], saved["scale"], saved["args"]["batch_sizes"], os.path.join(args.out, "capacity.png"))
        return

    import ray

    os.makedirs(args.out, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="sr-cap-")
    ray.init(num_cpus=os.cpu_count(), num_gpus=max(args.workers + [args.scale_workers]), _temp_dir=ray_tmp)
    rows = []
    try:
        template = os.path.join(os.path.abspath(args.out), f"template-{args.windows}")
        build_store(template, args.windows)
        for workers in args.workers:
            for batch in args.batch_sizes:
                rows.append(one_run(template, workers, batch, args.hosts, args.flush_interval_s))
                print(json.dumps(rows[-1]), flush=True)
        sweep = [r for r in rows if r["workers"] == args.scale_workers] or rows
        best_batch = max(sweep, key=lambda r: r["windows_per_s"])["batch_size"]
        scale = []
        for n in args.scale_windows:
            template_n = os.path.join(os.path.abspath(args.out), f"template-{n}")
            build_store(template_n, n)
            scale.append(one_run(template_n, args.scale_workers, best_batch, args.hosts, args.flush_interval_s))
            print(json.dumps(scale[-1]), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    with open(os.path.join(args.out, "capacity.json"), "w") as f:
        json.dump({"sweep": rows, "scale": scale, "args": vars(args)}, f, indent=1)
    print_tables(rows, scale, args.batch_sizes)
    plot(rows, scale, args.batch_sizes, os.path.join(args.out, "capacity.png"))


def print_tables(rows: list[dict], scale: list[dict], batch_sizes: list[int]) -> None:
    print("\n| workers | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |")
    print("|---|" + "---|" * len(batch_sizes))
    by = {(r["workers"], r["batch_size"]): r["windows_per_s"] for r in rows}
    for workers in sorted({r["workers"] for r in rows}):
        cells = [f"{by[(workers, b)]:,.0f}" if (workers, b) in by else "" for b in batch_sizes]
        print(f"| {workers} | " + " | ".join(cells) + " |")
    print("\n| windows | workers | batch | seconds | windows/s |")
    print("|---|---|---|---|---|")
    for r in scale:
        rate = f"{r['windows_per_s']:,.0f}"
        print(f"| {r['windows']:,} | {r['workers']} | {r['batch_size']} | {r['seconds']:.1f} | {rate} |")


def plot(rows: list[dict], scale: list[dict], batch_sizes: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for b in batch_sizes:
        points = sorted((r["workers"], r["windows_per_s"]) for r in rows if r["batch_size"] == b)
        left.plot(*zip(*points), marker="o", label=f"batch {b}")
    left.set(xscale="log", xlabel="simulated workers", ylabel="windows/s", title="coordinator throughput")
    left.axhline(20_000, color="grey", linestyle="--", linewidth=1, label="target 20,000")
    left.set_ylim(bottom=0)
    left.legend()
    points = sorted((r["windows"], r["windows_per_s"]) for r in scale)
    right.plot(*zip(*points), marker="o")
    right.set(xscale="log", xlabel="windows in the run", ylabel="windows/s", title="throughput vs run size")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
