"""Run STOCK sigllm on a signal, with recorded LLM answers replayed in place of the LLM.

This script runs in the stock sigllm environment (numpy<2, pandas<2, sigllm's own pins)
built by ``sigray.testing.stock_sigllm.ensure_stock_env``. It imports stock packages only,
never sigray, which is not installed there. It does what a sigllm user does:

    data = orion.data.load_signal(csv)
    events = sigllm.SigLLM(pipeline, hyperparameters=...).detect(data)

with two changes, neither touching any computation:

* the pipeline's HF block keeps sigllm's own annotation (name, inputs, outputs,
  hyperparameters) but its primitive is ``ReplayLLM``, which answers every prompt with
  the recorded texts, in window order;
* MLBlocks finds sigllm's, Orion's and ml-stars' JSON folders through the same entry
  points, resolved without ``pkg_resources``' re-check of each package's full requirement
  tree: that check demands torch, tensorflow and transformers, which this environment
  leaves out on purpose (the LLM is replayed, and no detector block imports them).

Usage: python -I stock_replay.py REQUEST_JSON OUT_JSON
       python -I stock_replay.py --check       (loads mistral_detector; exits 0 when usable)
REQUEST_JSON holds ``pipeline``, ``signal_csv``, ``answers`` and ``hyperparameters``.
OUT_JSON receives ``anomalies`` (start, end, severity rows), ``n_prompts``,
``prompts_sha256`` and ``llm_calls``; or, when the stock run raises, ``error`` with the
exception's type, message and traceback (and the script exits 1).
"""

import copy
import hashlib
import json
import sys
import traceback

HF = "sigllm.primitives.forecasting.huggingface.HF"


class ReplayLLM:
    """Stands in for sigllm's HF primitive: ``forecast`` returns the recorded answers.

    Every call gets the same answers, so a flow that calls the LLM block more than once
    (fit then detect) sees the same model behaviour each time. The prompts of each call
    are kept so the caller can check they match the ones the answers were given for.
    """

    answers = None  # list[list[str]], set by main() before the pipeline runs
    calls = []  # the prompts of each forecast call

    def __init__(self, raw=False, **hyperparameters):
        self.raw = raw
        self.hyperparameters = hyperparameters

    def forecast(self, X, **kwargs):
        prompts = [str(x) for x in X]
        ReplayLLM.calls.append(prompts)
        if len(prompts) != len(ReplayLLM.answers):
            raise RuntimeError(
                f"replay: stock sigllm made {len(prompts)} prompts but {len(ReplayLLM.answers)} answers were recorded"
            )
        responses = copy.deepcopy(ReplayLLM.answers)
        if self.raw:
            return responses, None
        return responses


def _load_entry_points(entry_point_name, entry_point_group="mlblocks"):
    """mlblocks.discovery._load_entry_points, with ``resolve()`` for ``load()`` (no requirement check)."""
    import pkg_resources

    lookup_paths = []
    for entry_point in pkg_resources.iter_entry_points(entry_point_group):
        if entry_point.name == entry_point_name:
            paths = entry_point.resolve()
            if isinstance(paths, str):
                lookup_paths.append(paths)
            elif isinstance(paths, (list, tuple)):
                lookup_paths.extend(paths)
    return lookup_paths


def _pipeline_spec(pipeline):
    """sigllm's pipeline JSON with only the HF block's primitive swapped for ReplayLLM."""
    import mlblocks.discovery
    from mlblocks.discovery import load_pipeline, load_primitive

    mlblocks.discovery._load_entry_points = _load_entry_points

    if pipeline.endswith(".json"):
        with open(pipeline) as f:
            spec = json.load(f)
    else:
        spec = load_pipeline(pipeline)
    spec = copy.deepcopy(spec)
    llm = [i for i, p in enumerate(spec["primitives"]) if p == HF]
    if len(llm) != 1:
        raise RuntimeError(f"replay: pipeline {pipeline!r} has {len(llm)} {HF} blocks, expected 1")
    annotation = copy.deepcopy(load_primitive(HF))
    annotation["primitive"] = "__main__.ReplayLLM"
    spec["primitives"][llm[0]] = annotation
    return spec


def _run(request):
    from orion.data import load_signal
    from sigllm import SigLLM

    ReplayLLM.answers = [list(a) for a in request["answers"]]
    data = load_signal(request["signal_csv"])
    sigllm = SigLLM(_pipeline_spec(request["pipeline"]), hyperparameters=request.get("hyperparameters") or None)
    events = sigllm.detect(data)
    prompts = ReplayLLM.calls[0] if ReplayLLM.calls else []
    return {
        "anomalies": {
            "start": [int(v) for v in events["start"]],
            "end": [int(v) for v in events["end"]],
            "severity": [float(v) for v in events["severity"]],
        },
        "n_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("\x00".join(prompts).encode()).hexdigest(),
        "llm_calls": len(ReplayLLM.calls),
    }


def main(argv):
    if argv == ["--check"]:
        import orion.data  # noqa: F401
        import sigllm  # noqa: F401

        _pipeline_spec("mistral_detector")
        return 0
    request_path, out_path = argv
    with open(request_path) as f:
        request = json.load(f)
    try:
        result, status = _run(request), 0
    except Exception as exc:  # noqa: BLE001 - reported to the caller, whatever stock sigllm raised
        result = {
            "error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()},
            "llm_calls": len(ReplayLLM.calls),
        }
        status = 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
