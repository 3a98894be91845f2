"""Run a stock sigllm pipeline (detector or prompter) with its LLM step cut out.

sigllm pipelines are MLBlocks JSON: preprocessing blocks, one LLM block, then
post-processing blocks. We load sigllm's own JSON, swap the LLM block for
``LLMBoundary`` (same name, same inputs and outputs), and run the pipeline twice:

* ``plan``: sigllm's own ``fit`` up to the boundary, which captures the MLBlocks
  context (windows, scaling, indices) and the prompts the LLM would have received;
* ``postprocess``: sigllm's own ``fit`` from the boundary on, with the boundary
  producing the answers the workers collected.

Everything but the LLM call is therefore sigllm's and Orion's code, unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sigray.engines.base import Sampling
from sigray.errors import ConfigError, InputError
from sigray.pipelines.answers import AnomalyAnswers, AnswerFormat, ForecastAnswers
from sigray.pipelines.llm_steps import FORECAST_HF, LLM_STEPS, PROMPT_HF
from sigray.pipelines.numpy2_compat import REPLACEMENTS
from sigray.pipelines.sigllm_env import use_sigllm_registry
from sigray.signals import Signal

_PARSE_RESPONSE = "sigllm.primitives.prompting.anomalies.parse_anomaly_response"
_FORMAT_AS_INTEGER = "sigllm.primitives.transformation.format_as_integer"
_BOUNDARY = "sigray.pipelines.sigllm_pipeline.LLMBoundary"


class LLMBoundary:
    """Stands in for sigllm's LLM primitive: produces the answers sigray collected."""

    def __init__(self, **hyperparameters):
        self.hyperparameters = hyperparameters
        self.answers = None

    def produce(self, **kwargs):
        return self.answers


class _BoundaryReached(Exception):
    def __init__(self, context: dict, produce_args: dict):
        super().__init__("boundary reached")
        self.context = context
        self.produce_args = produce_args


def _split_pipeline_class():
    from mlblocks import MLPipeline

    class SplitPipeline(MLPipeline):
        """An MLPipeline that stops at the LLM boundary while it has no answers yet."""

        boundary_block: str = ""

        def _produce_block(self, block, block_name, context, *args, **kwargs):
            if block_name == self.boundary_block and block.instance.answers is None:
                produce_args = self._get_block_args(block_name, block.produce_args, context)
                raise _BoundaryReached(dict(context), produce_args)
            return super()._produce_block(block, block_name, context, *args, **kwargs)

    return SplitPipeline


@dataclass
class SignalPlan:
    """One signal's windows (as sigllm's strings), their prompts, and the MLBlocks context."""

    signal: Signal
    windows: list[str]
    prompts: list[str]
    context: dict

    @property
    def n_windows(self) -> int:
        return len(self.prompts)


@dataclass
class Detection:
    """Post-processing output for one signal."""

    anomalies: pd.DataFrame  # columns start, end, severity (sigllm's shape)
    failed_windows: list[int]  # window positions within the signal left without an answer
    forecast: np.ndarray | None = None  # per-timestamp forecast, when the pipeline has one
    forecast_index: np.ndarray | None = None


def load_pipeline_spec(pipeline: str) -> dict:
    """sigllm's pipeline JSON by registered name (``mistral_detector``) or by file path."""
    if pipeline.endswith(".json"):
        if not os.path.exists(pipeline):
            raise ConfigError(f"pipeline file {pipeline} does not exist.")
        with open(pipeline) as f:
            return json.load(f)
    use_sigllm_registry()
    from mlblocks.discovery import find_pipelines, load_pipeline

    try:
        return load_pipeline(pipeline)
    except ValueError:
        known = sorted(find_pipelines("sigllm"))
        raise ConfigError(f"unknown pipeline {pipeline!r}; sigllm ships: {', '.join(known)}.") from None


def apply_overrides(spec: dict, params: dict) -> dict:
    """A copy of ``spec`` with ``{"block#1": {"param": value}}`` overrides applied."""
    spec = copy.deepcopy(spec)
    names = _block_names(spec["primitives"])
    init_params = spec.setdefault("init_params", {})
    for block, values in params.items():
        if block not in names:
            raise ConfigError(f"pipeline has no block {block!r}; its blocks are: {', '.join(names)}.")
        if not isinstance(values, dict):
            raise ConfigError(f"parameters for {block!r} must be a mapping, got {values!r}.")
        init_params.setdefault(block, {}).update(values)
    return spec


_SCALAR2FLOAT = "sigllm.primitives.transformation.Scalar2Float"
_REGRESSION_ERRORS = "orion.primitives.timeseries_errors.regression_errors"


def fix_error_units(spec: dict, pipeline: str) -> dict:
    """``spec`` with the targets ``y`` converted back to original units before the errors.

    sigllm 0.2.0's ``mistral_detector`` and ``gpt_detector`` scale the signal to integers
    (``Float2Scalar``), convert the forecasts back (``Scalar2Float``) but not the targets,
    so ``regression_errors`` compares ``y`` in scaled units with ``y_hat`` in original
    units. The kmeans pipeline converts both. This adds sigllm's own ``Scalar2Float``
    for ``y`` (with the same minimum and decimals) right before the errors.
    """
    primitives = spec["primitives"]
    converts_y = any(
        inputs.get("X") == "y" and ("Scalar2Float#" in block or "Cluster2Float#" in block)
        for block, inputs in spec.get("input_names", {}).items()
    )
    if _REGRESSION_ERRORS not in primitives or _SCALAR2FLOAT not in primitives or converts_y:
        raise ConfigError(
            f"fix_error_units applies to detectors that scale with Float2Scalar and leave the targets scaled "
            f"(mistral_detector, gpt_detector); pipeline {pipeline!r} is not one of them."
        )
    spec = copy.deepcopy(spec)
    at = spec["primitives"].index(_REGRESSION_ERRORS)
    spec["primitives"].insert(at, _SCALAR2FLOAT)
    name = _block_names(spec["primitives"])[at]
    spec.setdefault("input_names", {})[name] = {"X": "y"}
    spec.setdefault("output_names", {})[name] = {"X": "y"}
    return spec


def _block_names(primitives: list) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for primitive in primitives:
        name = primitive if isinstance(primitive, str) else primitive["name"]
        counts[name] = counts.get(name, 0) + 1
        names.append(f"{name}#{counts[name]}")
    return names


class SigllmPipeline:
    """A sigllm pipeline (detector or prompter), split at its LLM step.

    ``spec`` is the resolved pipeline JSON (sigllm's, plus overrides): it is part of the
    run identity, so changing any parameter gives another fingerprint.
    """

    def __init__(self, pipeline: str, params: dict | None = None, fix_units: bool = False):
        self.name = pipeline
        self.spec = apply_overrides(load_pipeline_spec(pipeline), params or {})
        if fix_units:
            self.spec = fix_error_units(self.spec, pipeline)
        names = _block_names(self.spec["primitives"])
        llm = [i for i, p in enumerate(self.spec["primitives"]) if p in LLM_STEPS]
        if len(llm) != 1:
            raise ConfigError(
                f"pipeline {pipeline!r} has no sigllm LLM step sigray can run (looked for {', '.join(LLM_STEPS)})."
            )
        self._llm_index = llm[0]
        self.llm_block = names[self._llm_index]
        self.step = LLM_STEPS[self.spec["primitives"][self._llm_index]]
        after = names[self._llm_index :]
        self._format_block = next((n for n in after if n.startswith(_FORMAT_AS_INTEGER + "#")), None)
        self._parse_block = next((n for n in after if n.startswith(_PARSE_RESPONSE + "#")), None)
        if self._parse_block and self._block_params(self._parse_block).get("interval") and self._format_block:
            raise ConfigError(
                f"pipeline {pipeline!r} parses interval answers and then runs format_as_integer on them, "
                "which sigllm cannot do (it raises TypeError on a list); drop one of the two."
            )

    @property
    def family(self) -> str:
        """``detector`` (forecasts) or ``prompter`` (asks for anomalies)."""
        return self.step.family

    @property
    def needs_normal(self) -> bool:
        """One-shot prompters take a normal reference signal as a second input."""
        return any(v == "normal" for block in self.spec.get("input_names", {}).values() for v in block.values())

    # -- parameters ---------------------------------------------------------

    def _block_params(self, block: str | None) -> dict:
        from mlblocks.discovery import load_primitive

        if block is None:
            return {}
        annotation = load_primitive(block.split("#")[0])
        fixed = annotation.get("hyperparameters", {}).get("fixed", {})
        params = {k: v.get("default") for k, v in fixed.items()}
        params.update(self.spec.get("init_params", {}).get(block, {}))
        return params

    def _param_of(self, suffix: str, name: str, default=None):
        block = next((n for n in _block_names(self.spec["primitives"]) if n.endswith(suffix)), None)
        return self._block_params(block).get(name, default)

    def min_points(self) -> int:
        """Points (after aggregation) a signal needs for one window."""
        window = int(self._param_of("rolling_window_sequences#1", "window_size", 0))
        return window + int(self._param_of("rolling_window_sequences#1", "target_size", 0))

    @property
    def llm_params(self) -> dict:
        return self._block_params(self.llm_block)

    def answer_format(self, plans: list[SignalPlan]) -> AnswerFormat:
        """The answer format shared by every window of the run."""
        llm = self.llm_params
        parse = self._block_params(self._format_block)
        sep = llm.get("sep", ",")
        sample = [w for p in plans for w in p.windows[:1000]]
        longest = max((len(v) for w in sample for v in "".join(w.split()).split(sep)), default=4)
        if self.family == "detector":
            return ForecastAnswers(
                sep=sep,
                trunc=parse.get("trunc"),
                errors=parse.get("errors", "ignore"),
                steps=int(llm.get("steps", 1)),
                max_digits=longest + 1,
                continuation=self.step.primitive == FORECAST_HF,
                spaced=bool(self._param_of("format_as_string#1", "space", False)),
            )
        first = plans[0].windows[0] if plans and plans[0].windows else ""
        return AnomalyAnswers(
            sep=sep,
            parsed=self._parse_block is not None,
            interval=bool(self._block_params(self._parse_block).get("interval", False)),
            window_size=int(self._param_of("rolling_window_sequences#1", "window_size", 0)),
            max_digits=longest + 1,
            # sigllm: tokens of the first window x anomalous_percent; characters bound tokens.
            max_new_tokens=max(16, int(len(first) * float(llm.get("anomalous_percent", 0.5)))),
            after_marker=self.step.primitive == PROMPT_HF and not llm.get("restrict_tokens"),
            trunc=parse.get("trunc"),
            errors=parse.get("errors", "ignore"),
        )

    def sampling(self, answers: AnswerFormat, constrained: bool) -> Sampling:
        llm = self.llm_params
        return Sampling(
            n=int(llm.get("samples", 1)),
            temperature=float(llm.get("temp", 1.0)),
            top_p=float(llm.get("top_p", 1.0)),
            max_tokens=answers.max_tokens,
            regex=answers.regex if constrained else None,
            chat=self.step.is_chat(llm),
        )

    # -- the two halves -----------------------------------------------------

    def _build(self):
        spec = copy.deepcopy(self.spec)
        from mlblocks.discovery import load_primitive

        boundary = copy.deepcopy(load_primitive(spec["primitives"][self._llm_index]))
        boundary["primitive"] = _BOUNDARY
        boundary["produce"]["method"] = "produce"
        boundary.pop("fit", None)
        spec["primitives"][self._llm_index] = boundary
        for i, primitive in enumerate(spec["primitives"]):
            if isinstance(primitive, str) and primitive in REPLACEMENTS:
                annotation = copy.deepcopy(load_primitive(primitive))
                annotation["primitive"] = REPLACEMENTS[primitive]
                spec["primitives"][i] = annotation
        pipeline = _split_pipeline_class()(spec)
        pipeline.verbose = False
        pipeline.boundary_block = self.llm_block
        return pipeline

    def plan(self, signal: Signal, normal: Signal | None = None) -> SignalPlan:
        """sigllm's preprocessing of one signal, up to the prompts.

        ``normal``: the reference signal of one-shot prompters (``needs_normal``).
        """
        inputs = {"X": signal.frame()}
        if self.needs_normal:
            if normal is None:
                raise InputError(
                    f"pipeline {self.name!r} is one-shot: it needs a normal reference signal "
                    "(a CSV of timestamp,value without anomalies; --normal FILE, or normal= in the API)."
                )
            time_column = self._param_of("time_segments_aggregate#2", "time_column", "timestamp")
            inputs["normal"] = normal.frame().rename(columns={"timestamp": time_column})
        pipeline = self._build()
        try:
            pipeline.fit(output_="default", **inputs)
        except _BoundaryReached as reached:
            windows = [str(x) for x in reached.produce_args["X"]]
            prompts = self.step.prompts(windows, self.llm_params, reached.produce_args)
            return SignalPlan(signal=signal, windows=windows, prompts=prompts, context=reached.context)
        raise ConfigError(f"pipeline {self.name!r} finished without reaching its LLM step.")

    def postprocess(self, plan: SignalPlan, answers: list[list[str] | None]) -> Detection:
        """sigllm's post-processing on the collected answers.

        ``answers[w]`` is the list of sampled texts for window ``w``, or ``None`` when the
        window failed. Failed windows are dropped with their targets before aggregation
        (each kept window still lines up with its own target), and reported.
        """
        failed = [w for w, a in enumerate(answers) if a is None]
        kept = [a for a in answers if a is not None]
        if not kept:
            return Detection(anomalies=_empty_events(), failed_windows=failed)
        context = dict(plan.context)
        if failed:
            keep = np.array([a is not None for a in answers])
            for key, value in context.items():
                if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == len(answers):
                    context[key] = value[keep]
        pipeline = self._build()
        pipeline.blocks[self.llm_block].instance.answers = kept
        from orion.core import Orion

        forecast_output = "numpy.reshape#1"  # the context right after it holds y_hat
        has_forecast = forecast_output in pipeline.blocks
        with warnings.catch_warnings():
            # Orion's find_anomalies trips a pandas FutureWarning per window; not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            outputs = pipeline.fit(
                start_=self.llm_block,
                output_=["default", forecast_output] if has_forecast else "default",
                **context,
            )
        events, after_reshape = outputs if has_forecast else (outputs, None)
        forecast = None if after_reshape is None else after_reshape["y_hat"]
        return Detection(
            anomalies=Orion._build_events_df(events),
            failed_windows=failed,
            forecast=None if forecast is None else np.asarray(forecast, dtype=float).ravel(),
            forecast_index=np.asarray(context.get("target_index")),
        )


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"start": pd.Series(dtype="int64"), "end": pd.Series(dtype="int64"), "severity": []})
