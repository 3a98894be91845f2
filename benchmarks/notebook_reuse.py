"""A notebook's second ``detect``: engines kept loaded between calls (issue 19.1).

``sigray.SigLLM`` keeps its workers, each with its loaded engine, between ``detect`` calls.
This times three calls in one process with vLLM and the packaged SmolLM2 on a CPU: the
first (Ray, the engine and the windows), a second on other data (the same number of new
windows, the engine already loaded), and, for comparison, a second on other data by a
new ``SigLLM`` that is closed right after (what every call cost before: a new engine each).

    .venv/bin/python benchmarks/notebook_reuse.py [--rows 1000]

Prints one JSON line. Results in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main(rows: int) -> dict:
    import sigray
    from sigray.demo import demo_signal

    os.environ.setdefault("SIGRAY_CACHE", tempfile.mkdtemp(prefix="sigray-bench-"))
    _, data = demo_signal(max_rows=rows)
    interval = {"interval": 1800}  # half-hour points: a short signal still gives some windows
    hyperparameters = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": interval}
    model = sigray.SigLLM("mistral_detector", hyperparameters=hyperparameters, progress=False, batch_size=16)
    out = {"rows": rows}
    # Other data: scaled, not shifted (sigllm rescales by the minimum: a shifted signal asks the
    # same windows, which the store answers without an engine).
    for label, frame in (("first", data), ("second_kept_engine", data.assign(value=data["value"] * 1.5))):
        started = time.perf_counter()
        model.detect(frame)
        result = model.last_result
        out[label] = {
            "s": round(time.perf_counter() - started, 1),
            "windows": result.computed_windows,
            "workers_reused": result.workers_reused,
        }
    model.close()
    fresh = sigray.SigLLM("mistral_detector", hyperparameters=hyperparameters, progress=False, batch_size=16)
    started = time.perf_counter()
    fresh.detect(data.assign(value=data["value"] * 2.0))
    fresh.close()
    out["second_new_engine"] = {
        "s": round(time.perf_counter() - started, 1),
        "windows": fresh.last_result.computed_windows,
    }
    out["ratio_new_over_kept"] = round(out["second_new_engine"]["s"] / out["second_kept_engine"]["s"], 2)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    print(json.dumps(main(parser.parse_args().rows)), flush=True)
