"""Malformed answers with and without vLLM's structured-output constraint, same model, same prompts.

    .venv/bin/python benchmarks/malformed.py                  # CPU: packaged SmolLM2
    .venv/bin/python benchmarks/malformed.py --model tiny     # the tests' random-weight model
    .venv/bin/python benchmarks/malformed.py --pipeline mistral_prompter --max-rows 18050   # whole signal: 2 windows
    .venv/bin/python benchmarks/malformed.py --model mistralai/Mistral-7B-Instruct-v0.2 --max-rows 20000

1. **Engine level**: one vLLM engine answers every window's prompt twice, with the
   pipeline's regex and without it; each sample is checked with the pipeline's own
   validator (sigllm's parsers). Reported: invalid samples, and invalid windows (a window
   is invalid when any of its samples is, as sigray judges it).
2. **Run level**: ``sigray.run`` constrained and unconstrained (``constrained=False``) on
   the same signal: the retries spent and the windows that exhausted their retry budget.

Writes ``malformed.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.overhead import make_plan, parse_options  # noqa: E402


def engine_level(plan, model_path: str, options: dict) -> dict:
    from sigray.engines.vllm_engine import VllmEngine

    figures = {}
    seeds = plan.seeds(plan.plans[0])
    with VllmEngine(model_path, **options) as engine:
        for label, constrained in (("constrained", True), ("unconstrained", False)):
            samplings = plan.samplings(plan.plans[0], constrained=constrained)
            completions = engine.generate(plan.plans[0].prompts, samplings, seeds)
            checked = [
                [(t, plan.answers.check(plan.answers.response(t), cut=c.cut(k)).ok) for k, t in enumerate(c.texts)]
                for c in completions
            ]
            samples = sum(len(window) for window in checked)
            bad_samples = sum(not ok for window in checked for _, ok in window)
            bad_windows = sum(not all(ok for _, ok in window) for window in checked)
            example = next((t for window in checked for t, ok in window if not ok), None)
            figures[label] = {
                "windows": len(completions),
                "samples": samples,
                "invalid_samples": bad_samples,
                "invalid_windows": bad_windows,
                "invalid_example": example,
            }
            print(label, json.dumps(figures[label]), flush=True)
    return figures


def run_level(signal, args) -> dict:
    import sigray

    figures = {}
    for label, constrained in (("constrained", True), ("unconstrained", False)):
        store = tempfile.mkdtemp(prefix=f"{label}-", dir=args.out)
        os.rmdir(store)
        result = sigray.run(
            [signal],
            store,
            pipeline=args.pipeline,
            model=args.model,
            engine_options=args.options,
            constrained=constrained,
            max_attempts=args.max_attempts,
            batch_size=args.batch_size,
            cpus_per_worker=args.cpus_per_worker,
        )
        figures[label] = {
            "windows": result.total_windows,
            "retries": result.retries,
            "failed_windows": result.failed_windows,
            "answers_generated": result.total_windows + result.retries,
            "windows_per_s": result.windows_per_s,
        }
        print(label, json.dumps(figures[label]), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="as sigray run's; 'tiny': the tests' random-weight model")
    parser.add_argument("--pipeline", default="mistral_detector")
    parser.add_argument("--engine-option", action="append", default=[], help="KEY=VALUE for vllm.LLM")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=12400,
        help="rows of the bundled signal: 12,400 = 33 windows of mistral_detector",
    )
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--skip-runs", action="store_true", help="engine level only")
    parser.add_argument("--out", default="runs/malformed")
    args = parser.parse_args()
    args.options = parse_options(args.engine_option)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.model == "tiny":
        from sigray.testing.tiny_model import build_tiny_model

        args.model = build_tiny_model(os.path.join(args.out, "tiny-model"))
    from sigray.demo import demo_signal

    signal = demo_signal(args.max_rows)
    plan, model_path = make_plan([signal], args, args.pipeline)
    example = plan.samplings(plan.plans[0])[0].regex
    print(f"{plan.plans[0].n_windows} windows, {plan.sampling.n} samples each, regex e.g. {example}", flush=True)
    figures = {"engine": engine_level(plan, model_path, args.options)}
    if not args.skip_runs:
        figures["runs"] = run_level(signal, args)
    figures["args"] = vars(args)
    with open(os.path.join(args.out, "malformed.json"), "w") as f:
        json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
