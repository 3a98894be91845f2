"""Chaos at length: >= 100 seeded real faults during one run; is the result still exact?

Runs `sigray run` on NAB's nyc_taxi aggregated hourly (5,020 windows) with the test-double
engine (0.2 s per batch of 4, 2 workers, 5% malformed answers), injects faults with
sigray.testing.chaos (worker SIGKILL, worker SIGSTOP, coordinator SIGKILL, driver SIGKILL
with its local cluster, driver SIGTERM), then compares with a quiet run of the same
settings and prints what the faults cost.

    .venv/bin/python benchmarks/chaos.py [--faults 100] [--seed 11] [--out runs/chaos]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd

import sigray
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from sigray.testing.chaos import run_chaos

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")  # NAB, MIT: see its README
NAME = "nyc_taxi"
HOURLY = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1.interval=3600"
WORKERS, BATCH, DELAY_S, FLUSH_S = 2, 4, 0.2, 1.0


def _same(found: pd.DataFrame, expected: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(found, expected, check_dtype=False)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=os.path.join("runs", "chaos"))
    args = parser.parse_args()

    signal = os.path.join(DATA, "nab_orion", f"{NAME}.csv")
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    store, log = os.path.join(args.out, "run"), os.path.join(args.out, "generated.log")
    command = ["run", signal, "--store", store, "--engine", "test-double", "--param", HOURLY, "--max-attempts", "4"]
    command += ["--workers", str(WORKERS), "--batch-size", str(BATCH), "--flush-interval", str(FLUSH_S)]
    command += ["--lease-timeout", "3", "--load-timeout", "15", "--num-cpus", "4", "--quiet"]
    for option in ("garbage_rate=0.05", f"delay_s={DELAY_S}", f"log_path={log}"):
        command += ["--engine-option", option]
    ray_tmp = tempfile.mkdtemp(prefix="chaos-", dir="/tmp")
    report = run_chaos(command, store, ray_tmp, n_faults=args.faults, seed=args.seed, timeout_s=3600)

    reference = os.path.join(args.out, "reference")
    params = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
    quiet = sigray.run(
        [signal],
        reference,
        engine="test-double",
        engine_options={"garbage_rate": 0.05, "delay_s": DELAY_S},
        max_attempts=4,
        pipeline_params=params,
        workers=WORKERS,
        batch_size=BATCH,
        flush_interval_s=FLUSH_S,
    )
    status, _ = RunStore.open(store).read_state()
    _, ref_attempts = RunStore.open(reference).read_state()
    window_of = {_digest(p): w for w, p in enumerate(RunStore.open(store).read_prompts())}
    with open(log) as f:
        counts = collections.Counter(window_of[line.split()[0]] for line in f)
    generated = np.array([counts[w] for w in range(len(status))])
    extra = int((generated - ref_attempts).sum())
    same_answers = bool((RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all())
    found, expected = sigray.open(store).results().anomalies[NAME], quiet.anomalies[NAME].reset_index(drop=True)
    summary = {
        "windows": int(len(status)),
        "faults": len(report.faults),
        "faults_by_kind": dict(collections.Counter(kind for _, kind in report.faults)),
        "driver_runs": report.driver_runs,
        "final_exit_code": report.exit_codes[-1],
        "all_done": bool((status == DONE).all()),
        "answers_identical_to_quiet_run": same_answers,
        "anomalies_identical": _same(found, expected),
        "generations": int(generated.sum()),
        "quiet_run_generations": int(ref_attempts.sum()),
        "extra_generations": extra,
        "extra_per_fault": round(extra / max(1, len(report.faults)), 1),
        "chaos_wall_s": round(report.elapsed_s, 1),
        "quiet_wall_s": round(quiet.elapsed_s, 1),
    }
    print(json.dumps(summary, indent=1))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
