"""Orchestration overhead: sigray end to end vs the raw vLLM engine vs stock sigllm, same prompts.

    .venv/bin/python benchmarks/overhead.py                       # CPU: packaged SmolLM2, vLLM CPU
    .venv/bin/python benchmarks/overhead.py --model mistralai/Mistral-7B-Instruct-v0.2 \\
        --max-rows 20000 --batch-size 256 --stock-windows 8      # a GPU machine: no code change

One plan (``mistral_detector`` on the bundled NAB signal, cut to ``--max-rows`` rows), then:

1. **raw**: one ``vllm.LLM`` with sigray's engine settings, one ``LLM.generate`` call on every
   window's prompt with the same sampling and the same per-window seeds sigray uses;
2. **sigray**: ``sigray.run`` on the same signal and model (Ray, coordinator, one worker,
   validation, the Zarr store flushing every ``--flush-interval-s``);
3. **stock** (``--stock-windows N``, 0 to skip): stock sigllm 0.2.0's own ``HF`` forecaster
   (one window per transformers ``generate``) on the first N windows' prompts. Its hard-coded
   ``.to('cuda')`` is sent to the machine's device and its float16 to the vLLM run's dtype;
   nothing else is changed.

Reported: windows/s of each (sigray: from its first lease to its last window; raw: the
``generate`` call), and end to end with engine start. Writes ``overhead.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def make_plan(args, pipeline: str = "mistral_detector"):
    from sigray.api import resolve_engine_model
    from sigray.config import RunConfig
    from sigray.demo import demo_signal
    from sigray.plan import make_plan as plan_of

    name, frame = demo_signal(args.max_rows)
    config = RunConfig(
        store=os.path.join(args.out, "plan-only"), pipeline=pipeline, model=args.model, engine_options=args.options
    )
    plan = plan_of(config, [(name, frame)])
    return (name, frame), plan, resolve_engine_model(config)


def seeds_of(plan) -> list[int]:
    from sigray.coordinator import window_seed

    n = len(plan.prompts)
    return [window_seed(plan.config.seed, n, plan.sampling.n, w, 0) for w in range(n)]


def run_raw(plan, model_path: str, options: dict) -> dict:
    from sigray.engines.vllm_engine import VllmEngine

    started = time.perf_counter()
    engine = VllmEngine(model_path, **options)
    loaded = time.perf_counter()
    sampling, seeds = plan.sampling, seeds_of(plan)
    params = [VllmEngine._params(sampling, seed, sampling.n) for seed in seeds]
    outputs = engine._llm.generate(plan.prompts, params, use_tqdm=False)
    generated = time.perf_counter()
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    dtype = str(engine._llm.llm_engine.model_config.dtype).removeprefix("torch.")
    engine.close()
    return {
        "windows": len(plan.prompts),
        "engine_start_s": loaded - started,
        "generate_s": generated - loaded,
        "windows_per_s": len(plan.prompts) / (generated - loaded),
        "end_to_end_s": generated - started,
        "output_tokens": tokens,
        "dtype": dtype,
    }


def run_sigray(signal, args) -> dict:
    import sigray

    store = tempfile.mkdtemp(prefix="sigray-", dir=args.out)
    os.rmdir(store)
    started = time.perf_counter()
    result = sigray.run(
        [signal],
        store,
        model=args.model,
        engine_options=args.options,
        batch_size=args.batch_size,
        cpus_per_worker=args.cpus_per_worker,
        flush_interval_s=args.flush_interval_s,
    )
    ended = time.perf_counter()
    return {
        "windows": result.total_windows,
        "windows_per_s": result.windows_per_s,
        "end_to_end_s": ended - started,
        "retries": result.retries,
        "failed": result.failed_windows,
    }


def run_stock(plan, model_path: str, windows: int, dtype: str) -> dict:
    """Stock sigllm's HF forecaster, as its pipeline calls it, on the first ``windows`` prompts."""
    import torch
    import transformers
    from sigllm.primitives.forecasting import huggingface

    device = "cuda" if torch.cuda.is_available() else "cpu"
    to = transformers.BatchEncoding.to
    transformers.BatchEncoding.to = lambda self, _device: to(self, device)  # stock: .to('cuda')
    real_torch = huggingface.torch

    class _Torch:  # stock loads float16; give it the dtype the vLLM run used
        float16 = getattr(torch, dtype)

        def __getattr__(self, name):
            return getattr(real_torch, name)

    huggingface.torch = _Torch()
    try:
        started = time.perf_counter()
        model = huggingface.HF(
            name=model_path, steps=plan.answers.steps, samples=plan.sampling.n, temp=plan.sampling.temperature
        )
        loaded = time.perf_counter()
        model.forecast(plan.prompts[:windows])
        generated = time.perf_counter()
    finally:
        transformers.BatchEncoding.to = to
        huggingface.torch = real_torch
    return {
        "windows": windows,
        "engine_start_s": loaded - started,
        "generate_s": generated - loaded,
        "windows_per_s": windows / (generated - loaded),
        "device": device,
        "dtype": dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--engine-option", action="append", default=[], help="KEY=VALUE for vllm.LLM")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=12400,
        help="rows of the bundled signal: 12,400 = 33 windows of mistral_detector",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--flush-interval-s", type=float, default=5.0)
    parser.add_argument("--stock-windows", type=int, default=4)
    parser.add_argument("--out", default="runs/overhead")
    args = parser.parse_args()
    args.options = parse_options(args.engine_option)
    os.makedirs(args.out, exist_ok=True)

    signal, plan, model_path = make_plan(args)
    print(f"{len(plan.prompts)} windows, {plan.sampling.n} samples each, model {model_path}", flush=True)
    figures = {"raw": run_raw(plan, model_path, args.options)}
    print(json.dumps(figures["raw"]), flush=True)
    figures["sigray"] = run_sigray(signal, args)
    print(json.dumps(figures["sigray"]), flush=True)
    if args.stock_windows:
        figures["stock"] = run_stock(
            plan, model_path, min(args.stock_windows, len(plan.prompts)), figures["raw"]["dtype"]
        )
        print(json.dumps(figures["stock"]), flush=True)
    figures["sigray_over_raw"] = figures["sigray"]["windows_per_s"] / figures["raw"]["windows_per_s"]
    if "stock" in figures:
        figures["sigray_over_stock"] = figures["sigray"]["windows_per_s"] / figures["stock"]["windows_per_s"]
    figures["args"] = {k: v for k, v in vars(args).items()}
    with open(os.path.join(args.out, "overhead.json"), "w") as f:
        json.dump(figures, f, indent=1)
    print(json.dumps({k: v for k, v in figures.items() if k.startswith("sigray_over")}))


if __name__ == "__main__":
    main()
