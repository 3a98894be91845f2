"""Orchestration overhead: sigray end to end vs the raw vLLM engine vs stock sigllm, same prompts.

    .venv/bin/python benchmarks/overhead.py                       # CPU: packaged SmolLM2, vLLM CPU
    .venv/bin/python benchmarks/overhead.py --model tiny --stock-windows 0 \\
        --signal tests/data/nab_orion/ambient_temperature_system_failure.csv   # 1,175 windows
    .venv/bin/python benchmarks/overhead.py --model mistralai/Mistral-7B-Instruct-v0.2 \\
        --max-rows 20000 --batch-size 256 --stock-windows 8      # a GPU machine: no code change

One plan (``mistral_detector`` on the ``--signal`` files, or on the bundled NAB signal cut to
``--max-rows`` rows), then:

1. **raw**: one ``vllm.LLM`` with sigray's engine settings, one ``LLM.generate`` call on every
   window's prompt with the same sampling and the same per-window seeds sigray uses;
2. **sigray**: ``sigray.run`` on the same signals and model (Ray, coordinator, one worker,
   validation, the Zarr store flushing every ``--flush-interval-s``), once per ``--batch-size``
   (sigray's default when none is given);
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


def make_plan(sources: list, args, pipeline: str = "mistral_detector"):
    """The run's plan for ``sources`` (paths or (name, frame) pairs) and the model path the engine loads."""
    from sigray.api import resolve_engine_model
    from sigray.config import RunConfig
    from sigray.plan import make_plan as plan_of

    config = RunConfig(
        store=os.path.join(args.out, "plan-only"), pipeline=pipeline, model=args.model, engine_options=args.options
    )
    return plan_of(config, sources), resolve_engine_model(config)


def requests_of(plan) -> tuple[list[str], list, list[int]]:
    """Every window's prompt, sampling and first-attempt seed, as sigray's workers send them."""
    prompts, samplings, seeds = [], [], []
    for signal_plan in plan.plans:
        prompts += signal_plan.prompts
        samplings += plan.samplings(signal_plan)
        seeds += plan.seeds(signal_plan)
    return prompts, samplings, seeds


def run_raw(plan, model_path: str, options: dict) -> dict:
    from sigray.engines.vllm_engine import VllmEngine

    prompts, samplings, seeds = requests_of(plan)
    started = time.perf_counter()
    engine = VllmEngine(model_path, **options)
    loaded = time.perf_counter()
    params = [VllmEngine._params(sampling, seed) for sampling, seed in zip(samplings, seeds)]
    outputs = engine._llm.generate(prompts, params, use_tqdm=False)
    generated = time.perf_counter()
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    dtype = str(engine._llm.llm_engine.model_config.dtype).removeprefix("torch.")
    engine.close()
    return {
        "windows": len(prompts),
        "engine_start_s": loaded - started,
        "generate_s": generated - loaded,
        "windows_per_s": len(prompts) / (generated - loaded),
        "end_to_end_s": generated - started,
        "output_tokens": tokens,
        "dtype": dtype,
    }


def run_sigray(sources, args, batch_size: int) -> dict:
    import sigray

    store = tempfile.mkdtemp(prefix="sigray-", dir=args.out)
    os.rmdir(store)
    started = time.perf_counter()
    result = sigray.run(
        sources,
        store,
        model=args.model,
        engine_options=args.options,
        cpus_per_worker=args.cpus_per_worker,
        flush_interval_s=args.flush_interval_s,
        batch_size=batch_size,
    )
    ended = time.perf_counter()
    return {
        "batch_size": batch_size,
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
        model.forecast(requests_of(plan)[0][:windows])
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
    parser.add_argument("--model", default="smollm2", help="as sigray run's; 'tiny': the tests' random-weight model")
    parser.add_argument("--engine-option", action="append", default=[], help="KEY=VALUE for vllm.LLM")
    parser.add_argument("--signal", action="append", default=[], help="a signal CSV; repeat for several")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=12400,
        help="without --signal, rows of the bundled signal: 12,400 = 33 windows of mistral_detector",
    )
    parser.add_argument(
        "--batch-size", type=int, action="append", default=[], help="one sigray run each; default: sigray's"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--flush-interval-s", type=float, default=5.0)
    parser.add_argument("--stock-windows", type=int, default=4)
    parser.add_argument("--out", default="runs/overhead")
    args = parser.parse_args()
    args.options = parse_options(args.engine_option)
    os.makedirs(args.out, exist_ok=True)
    if args.model == "tiny":
        from sigray.testing.tiny_model import build_tiny_model

        args.model = build_tiny_model(os.path.join(args.out, "tiny-model"))

    from sigray.config import RunConfig
    from sigray.demo import demo_signal

    sources = args.signal or [demo_signal(args.max_rows)]
    plan, model_path = make_plan(sources, args)
    windows = sum(len(p.prompts) for p in plan.plans)
    print(f"{windows} windows, {plan.sampling.n} samples each, model {model_path}", flush=True)
    figures = {"raw": run_raw(plan, model_path, args.options)}
    print(json.dumps(figures["raw"]), flush=True)
    figures["sigray"] = [
        run_sigray(sources, args, batch_size) for batch_size in args.batch_size or [RunConfig.batch_size]
    ]
    for run in figures["sigray"]:
        run["sigray_over_raw"] = run["windows_per_s"] / figures["raw"]["windows_per_s"]
        print(json.dumps(run), flush=True)
    if args.stock_windows:
        figures["stock"] = run_stock(plan, model_path, min(args.stock_windows, windows), figures["raw"]["dtype"])
        figures["sigray_over_stock"] = figures["sigray"][0]["windows_per_s"] / figures["stock"]["windows_per_s"]
        print(json.dumps(figures["stock"]), flush=True)
    figures["args"] = {k: v for k, v in vars(args).items()}
    with open(os.path.join(args.out, "overhead.json"), "w") as f:
        json.dump(figures, f, indent=1)
    print(json.dumps({r["batch_size"]: round(r["sigray_over_raw"], 3) for r in figures["sigray"]}))


if __name__ == "__main__":
    main()
