"""What fixing sigllm's error-units quirk changes, on NAB signals with their labels.

sigllm 0.2.0's ``mistral_detector`` compares targets in scaled integer units with
forecasts in original units (see README, "Fidelity to sigllm"). sigray runs it faithfully
by default and offers ``fix_error_units``. This script runs the detector once per signal
(any engine and model, resumable stores under --out), then post-processes the *same*
stored answers both ways and scores each with Orion's contextual metrics.

    .venv/bin/python benchmarks/units_quirk.py           # test double, 3 NAB signals
    .venv/bin/python benchmarks/units_quirk.py --engine vllm --model smollm2 \
        --signals cpu_utilization_asg_misconfiguration
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pandas as pd

import sigray
from sigray.evaluate import evaluate, load_labels

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")  # NAB, MIT: see its README
# NAB signals long enough for mistral_detector's 6-hour aggregation and 140-point windows.
SIGNALS = ["cpu_utilization_asg_misconfiguration", "nyc_taxi", "ambient_temperature_system_failure"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", nargs="+", default=SIGNALS)
    parser.add_argument("--pipeline", default="mistral_detector", choices=["mistral_detector", "gpt_detector"])
    parser.add_argument("--engine", default="test-double")
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=os.path.join("runs", "units_quirk"))
    parser.add_argument("--labels", default=os.path.join(DATA, "nab_orion", "anomalies.csv"))
    args = parser.parse_args()

    settings = {"pipeline": args.pipeline, "engine": args.engine, "model": args.model, "flush_interval_s": 2.0}
    labels = load_labels(args.labels)
    detected: dict[str, dict[str, pd.DataFrame]] = {"faithful": {}, "fixed": {}}
    started = time.monotonic()
    for name in args.signals:
        csv = os.path.join(DATA, "nab_orion", f"{name}.csv")
        store = os.path.join(args.out, f"{args.engine}-{name}")
        detected["faithful"][name] = sigray.run([csv], store, **settings).anomalies[name]
        # The fix is a detection setting: the same stored answers, a second result set, nothing generated.
        fixed = sigray.run([csv], store, fix_error_units=True, **settings)
        assert fixed.computed_windows == 0
        detected["fixed"][name] = fixed.anomalies[name]
    rows = []
    for variant, found in detected.items():
        scores = evaluate(found, labels)
        for row in scores.to_dict(orient="records"):
            n = len(found[row["signal"]]) if row["signal"] in found else sum(len(f) for f in found.values())
            rows.append({"variant": variant, "detected": n, **row})
    table = pd.DataFrame(rows)
    print(f"{args.pipeline} on {args.engine} ({args.model or 'default model'}), {time.monotonic() - started:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scores.json"), "w") as f:
        json.dump(json.loads(table.to_json(orient="records")), f, indent=1)


if __name__ == "__main__":
    main()
