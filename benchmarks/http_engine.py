"""The HTTP engine vs the in-process vLLM engine: windows/s of the same run, same model.

    .venv/bin/python benchmarks/http_engine.py                       # CPU: the tiny model built offline
    .venv/bin/python benchmarks/http_engine.py --model smollm2       # CPU: the packaged SmolLM2
    .venv/bin/python benchmarks/http_engine.py --model mistralai/Mistral-7B-Instruct-v0.2 --batch-size 256

Both runs are ``sigray.run`` on the same signal (default: NAB's ambient_temperature_system_failure,
1,175 windows of ``mistral_detector``) with one worker and the same batch size, so they ask the
same prompts with the same seeds: **in process** (``--engine vllm``: the worker holds the engine)
and **over HTTP** (``--engine openai``: the worker sends each batch's requests, ``max_concurrency``
at a time, to vLLM's own OpenAI server started here with the same engine settings). Reported:
windows/s of each, from the first lease to the last window (engine start excluded), and the ratio.
Writes ``http_engine.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SIGNAL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "tests",
    "data",
    "nab_orion",
    "ambient_temperature_system_failure.csv",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (built offline), 'smollm2', a directory or HF id")
    parser.add_argument("--signal", default=DEFAULT_SIGNAL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=64, help="HTTP requests in flight per worker")
    parser.add_argument("--out", default=None, help="where stores, the server log and the figures go")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="sigray-http-")

    import ray

    import sigray
    from sigray.models import resolve_model
    from sigray.testing.tiny_model import build_tiny_model
    from sigray.testing.vllm_server import VllmServer

    model = build_tiny_model(os.path.join(out, "tiny")) if args.model == "tiny" else resolve_model(args.model)
    common = {"batch_size": args.batch_size, "flush_interval_s": 5.0}
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        local = sigray.run([args.signal], os.path.join(out, "in-process"), engine="vllm", model=model, **common)
        with VllmServer(model, "bench", os.path.join(out, "server.log")) as server:
            options = {"base_url": server.url, "max_concurrency": args.max_concurrency}
            http = sigray.run(
                [args.signal],
                os.path.join(out, "http"),
                engine="openai",
                model="bench",
                engine_options=options,
                **common,
            )
    finally:
        ray.shutdown()
    figures = {
        "model": args.model,
        "windows": local.total_windows,
        "batch_size": args.batch_size,
        "max_concurrency": args.max_concurrency,
        "in_process_windows_per_s": round(local.windows_per_s, 2),
        "http_windows_per_s": round(http.windows_per_s, 2),
        "http_over_in_process": round(http.windows_per_s / local.windows_per_s, 3),
        "failed": {"in_process": local.failed_windows, "http": http.failed_windows},
    }
    with open(os.path.join(out, "http_engine.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
