"""What a multivariate JSON-format window costs vLLM on a CPU, by dtype (issue 18.4).

The prompts are the multivariate demo's (the bundled MSL C-1 excerpt: 5 channels, windows of
25 steps, ``multivariate_mistral_detector_jsonformat``), each with its own regex and token
budget as workers send them, to the packaged SmolLM2 model. For each dtype, one engine: the
prompt length in the model's own tokens, then the seconds of each call (batches of 1, 4, 4
again and 8 prompts: a batch size's first call and a repeated one differ on a CPU).

    .venv/bin/python benchmarks/multivariate_vllm_cpu.py [--dtypes bfloat16 float32]

Prints one JSON line per dtype. Results in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(dtype: str) -> dict:
    from transformers import AutoTokenizer

    from sigray.api import resolve_engine_model, run_config
    from sigray.demo import demo_settings, demo_signal
    from sigray.engines.vllm_engine import VllmEngine
    from sigray.plan import make_plan

    _, settings = demo_settings("unused", {"pipeline": "multivariate_mistral_detector_jsonformat"})
    name, frame = demo_signal(multivariate=True)
    config = run_config("unused", settings)
    plan = make_plan(config, [(name, frame)])
    signal_plan = plan.plans[0]
    prompts, samplings, seeds = signal_plan.prompts, plan.samplings(signal_plan), plan.seeds(signal_plan)
    model = resolve_engine_model(config)
    tokens = [len(AutoTokenizer.from_pretrained(model)(p)["input_ids"]) for p in prompts[:20]]
    started = time.perf_counter()
    engine = VllmEngine(model, dtype=dtype)
    out = {"dtype": dtype, "prompt_tokens": [min(tokens), max(tokens)], "engine_start_s": 0.0, "calls": []}
    out["engine_start_s"] = round(time.perf_counter() - started, 1)
    at = 0
    try:
        for size in (1, 4, 4, 8):
            started = time.perf_counter()
            engine.generate(prompts[at : at + size], samplings[at : at + size], seeds[at : at + size])
            out["calls"].append({"prompts": size, "s": round(time.perf_counter() - started, 1)})
            at += size
    finally:
        engine.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    for dtype in parser.parse_args().dtypes:
        print(json.dumps(measure(dtype)), flush=True)
