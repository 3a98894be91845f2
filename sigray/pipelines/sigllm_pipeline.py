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
import difflib
import json
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sigray.config import canonical_json
from sigray.engines.base import Sampling
from sigray.errors import ConfigError, InputError, SigrayError, WindowingError
from sigray.pipelines.answers import (
    FORMAT_CLASSES,
    INTERLEAVE_FORMATS,
    SEPARATED_FORMATS,
    AnomalyAnswers,
    AnswerFormat,
    ForecastAnswers,
    FormattedForecastAnswers,
    JsonForecastAnswers,
)
from sigray.pipelines.llm_steps import FORECAST_HF, LLM_STEPS, PROMPT_HF
from sigray.pipelines.numpy2_compat import REPLACEMENTS
from sigray.pipelines.sigllm_env import use_sigllm_registry
from sigray.signals import Signal

_INT64_LIMIT = float(2**63 - 1)
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
    """One signal's windows (as sigllm's strings), their prompts, and the MLBlocks context;
    ``requests`` (keyed prompts with their answer limits) are added by ``sigray.plan``."""

    signal: Signal
    windows: list[str]
    prompts: list[str]
    context: dict
    requests: list = field(default_factory=list)
    width_used: int | None = None  # sigllm's interleave formats: one value's width, set on the whole signal

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
    """sigllm's pipeline JSON by registered name (``mistral_detector``) or by file path.

    Raises ConfigError listing sigllm's pipelines, the closest first, for an unknown name.
    """
    if pipeline.endswith(".json"):
        if not os.path.exists(pipeline):
            raise ConfigError(f"pipeline file {pipeline} does not exist.")
        try:
            with open(pipeline) as f:
                return json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"pipeline file {pipeline} is not valid JSON ({exc}).") from None
    use_sigllm_registry()
    from mlblocks.discovery import load_pipeline

    try:
        return load_pipeline(pipeline)
    except ValueError:
        known = sigllm_pipelines()
        close = difflib.get_close_matches(pipeline, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown pipeline {pipeline!r}.{hint} sigllm ships: {', '.join(known)}; or give a pipeline JSON file."
        ) from None


def sigllm_pipelines() -> list[str]:
    """The names of the pipelines sigllm ships (its ``pipelines`` folder)."""
    from importlib import resources

    root = resources.files("sigllm").joinpath("pipelines")
    found = []
    for folder in root.iterdir():
        if folder.is_dir():
            found.extend(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))
    return sorted(found)


def apply_overrides(spec: dict, params: dict) -> dict:
    """A copy of ``spec`` with ``{"block#1": {"param": value}}`` overrides applied."""
    spec = copy.deepcopy(spec)
    names = block_names(spec["primitives"])
    init_params = spec.setdefault("init_params", {})
    for block, values in params.items():
        if block not in names:
            raise ConfigError(f"pipeline has no block {block!r}; its blocks are: {', '.join(names)}.")
        if not isinstance(values, dict):
            raise ConfigError(f"parameters for {block!r} must be a mapping, got {values!r}.")
        init_params.setdefault(block, {}).update(values)
    return spec


def check_spec(spec, pipeline: str) -> None:
    """Refuse a pipeline (JSON or dict) MLBlocks would fail on with a KeyError or AttributeError:
    ``primitives`` a non-empty list of known primitives, ``init_params`` (and the wiring)
    mappings of blocks to mappings."""
    from mlblocks.discovery import load_primitive

    where = f"pipeline {pipeline!r}"
    primitives = spec.get("primitives") if isinstance(spec, dict) else None
    if not isinstance(primitives, list) or not primitives:
        raise ConfigError(f"{where}: expected sigllm's pipeline JSON, a mapping with a list of 'primitives'.")
    for primitive in primitives:
        if not isinstance(primitive, str):
            raise ConfigError(f"{where}: primitive {primitive!r} is not a primitive's name.")
        try:
            load_primitive(primitive)
        except ValueError:
            raise ConfigError(f"{where}: unknown primitive {primitive!r}; is its name misspelled?") from None
    for part in ("init_params", "input_names", "output_names"):
        blocks = spec.get(part, {})
        if not isinstance(blocks, dict) or not all(isinstance(v, dict) for v in blocks.values()):
            raise ConfigError(f"{where}: {part} must map blocks to mappings, {{'block#1': {{'name': value}}}}.")


def check_blocks_named(spec: dict, pipeline: str) -> None:
    """A setting or wiring for a block the pipeline does not have (a typo, a removed block)
    would be ignored by MLBlocks: the user's setting silently lost."""
    names = block_names(spec["primitives"])
    for part in ("init_params", "input_names", "output_names"):
        unknown = [block for block in spec.get(part, {}) if block not in names]
        if unknown:
            where = f"pipeline {pipeline!r}"
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: {part} names block {unknown[0]!r}, which the pipeline does not have.{hint} "
                f"Its blocks are: {', '.join(names)}."
            )


_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "string": ((str,), "a string"),
    "list": ((list,), "a list"),
    "tuple": ((list, tuple), "a list"),
}


# Lower bounds the primitives' annotations do not give: at 0 ``time_segments_aggregate`` loops
# forever and ``rolling_window_sequences`` makes empty windows (below 0, an IndexError), after
# the run was planned and its store made.
# A reader's ``trunc`` (target values kept per answer) at 0 keeps none: sigllm's readers return
# empty answers and post-processing fails (an OverflowError, or zarr's on the empty forecast).
_AGGREGATE = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate"
_ROLLING = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences"
_READERS = (
    "sigllm.primitives.transformation.format_as_integer",
    *(f"sigllm.primitives.formatting.{m}.format_as_integer" for m in ("json_format", *FORMAT_CLASSES)),
)
_AT_LEAST = {
    (_AGGREGATE, "interval"): 1,
    (_ROLLING, "window_size"): 1,
    (_ROLLING, "target_size"): 1,
    (_ROLLING, "step_size"): 1,
    **{(reader, "trunc"): 1 for reader in _READERS},
    # at 0 tokens no answer can hold a value: every window would fail after the engines started
    **{
        (step, "steps"): 1
        for step in ("sigllm.primitives.forecasting.huggingface.HF", "sigllm.primitives.forecasting.gpt.GPT")
    },
}


def check_hyperparameters(block: str, values: dict, source: str = "--param") -> None:
    """Refuse what MLBlocks would fail on (or loop forever with) after hours of work: a name the
    primitive does not take, a value of the wrong type, outside its range or its choices.
    The rules are the primitive's own annotation (MLBlocks' JSON). ``source`` names where the
    values were set, for the message (``--param``, or a pipeline JSON's init_params)."""
    from mlblocks.discovery import load_primitive

    use_sigllm_registry()
    known = {}
    for kind in ("fixed", "tunable"):
        known.update(load_primitive(block.split("#")[0]).get("hyperparameters", {}).get(kind, {}))
    for name, value in values.items():
        where = f"{source} {block}.{name}"
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: the primitive has no parameter {name!r}.{hint} It takes: {', '.join(known)}.")
        spec = known[name]
        if value is None and spec.get("default") is None:
            continue
        kinds, described = _TYPES.get(str(spec.get("type")), ((object,), ""))
        wrong_type = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        low, high = (spec.get("range") or [None, None])[:2]
        low = _AT_LEAST.get((block.split("#")[0], name), low) if low is None else low
        outside = (
            not wrong_type
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and ((low is not None and value < low) or (high is not None and value > high))
        )
        choices = spec.get("values")
        if wrong_type or outside or (choices and value not in choices):
            bounds = {(True, True): f" in [{low}, {high}]", (True, False): f" >= {low}", (False, True): f" <= {high}"}
            expected = described + bounds.get((low is not None, high is not None), "")
            expected += f" among {choices}" if choices else ""
            raise ConfigError(f"{where}={json.dumps(value)}: expected {expected.strip() or 'another value'}.")


_SCALAR2FLOAT = "sigllm.primitives.transformation.Scalar2Float"
_MULTIVARIATE_FORMATTING = "sigllm.primitives.formatting."  # sigllm's multivariate window formats
_JSON_FORMAT_AS_INTEGER = "sigllm.primitives.formatting.json_format.format_as_integer"
_OTHER_FORMATS = (*SEPARATED_FORMATS, *INTERLEAVE_FORMATS)
_REGRESSION_ERRORS = "orion.primitives.timeseries_errors.regression_errors"
_PERSISTENCE = "sigllm.primitives.formatting.persistence_control"
_PERSISTENCE_NOTE = (
    " sigllm's persistence_control is a baseline without a model: its forecast is each window's last value "
    "(sigllm.primitives.formatting.utils.run_pipeline(PersistenceControl()) runs it in seconds, with no engine)."
)


def _format_method(block: str) -> str:
    """``value_concatenation`` for ``sigllm.primitives.formatting.value_concatenation.format_as_integer#1``."""
    if not block.startswith(_MULTIVARIATE_FORMATTING):
        return ""
    return block[len(_MULTIVARIATE_FORMATTING) :].split(".")[0]


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
    name = block_names(spec["primitives"])[at]
    spec.setdefault("input_names", {})[name] = {"X": "y"}
    spec.setdefault("output_names", {})[name] = {"X": "y"}
    return spec


def block_names(primitives: list) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for primitive in primitives:
        name = primitive if isinstance(primitive, str) else primitive["name"]
        counts[name] = counts.get(name, 0) + 1
        names.append(f"{name}#{counts[name]}")
    return names


class SigllmPipeline:
    """A sigllm pipeline (detector or prompter), split at its LLM step.

    ``spec`` is the resolved pipeline JSON (sigllm's, plus overrides). What it decides
    splits at the LLM step: ``generation_spec`` (preprocessing, the prompt, the LLM step's
    own parameters) decides a window's answers; ``detection_settings`` (everything after)
    only what is made of them, so changing it reuses every stored answer.

    ``base_spec``: the pipeline JSON itself, when it is not read by name or file (a store
    keeps it, so post-processing can run from the store alone).
    """

    def __init__(
        self, pipeline: str, params: dict | None = None, fix_units: bool = False, base_spec: dict | None = None
    ):
        use_sigllm_registry()
        self.name = pipeline
        self.base_spec = copy.deepcopy(base_spec) if base_spec is not None else load_pipeline_spec(pipeline)
        check_spec(self.base_spec, pipeline)
        self.params = copy.deepcopy(params or {})
        self.fix_units = fix_units
        self.spec = apply_overrides(self.base_spec, self.params)
        for block, values in self.params.items():
            check_hyperparameters(block, values)
        if fix_units:
            self.spec = fix_error_units(self.spec, pipeline)
        names = block_names(self.spec["primitives"])
        llm = [i for i, p in enumerate(self.spec["primitives"]) if p in LLM_STEPS]
        if len(llm) != 1:
            baseline = any(_PERSISTENCE in p for p in self.spec["primitives"] if isinstance(p, str))
            raise ConfigError(
                f"pipeline {pipeline!r} has no sigllm LLM step sigray can run (looked for {', '.join(LLM_STEPS)})."
                + (_PERSISTENCE_NOTE if baseline else "")
            )
        self._llm_index = llm[0]
        self.llm_block = names[self._llm_index]
        self.step = LLM_STEPS[self.spec["primitives"][self._llm_index]]
        after = names[self._llm_index :]
        self._format_block = next((n for n in after if n.startswith(_FORMAT_AS_INTEGER + "#")), None)
        self._json_block = next((n for n in after if n.startswith(_JSON_FORMAT_AS_INTEGER + "#")), None)
        # sigllm's other multivariate formats: the reader after the LLM step, the writer before it
        self._reader_block = next((n for n in after if _format_method(n) in _OTHER_FORMATS), None)
        before = names[: self._llm_index]
        self._writer_block = next((n for n in before if _format_method(n) and "format_as_string" in n), None)
        self._parse_block = next((n for n in after if n.startswith(_PARSE_RESPONSE + "#")), None)
        self._check_multivariate_formats(pipeline, after)
        check_blocks_named(self.base_spec, pipeline)
        for block, values in self.base_spec.get("init_params", {}).items():  # checked as --param is
            given = {k: v for k, v in values.items() if k not in self.params.get(block, {})}
            check_hyperparameters(block, given, source=f"pipeline {pipeline!r}: init_params")
        self._check_trunc_fits(after)
        if self._parse_block and self._block_params(self._parse_block).get("interval") and self._format_block:
            raise ConfigError(
                f"pipeline {pipeline!r} parses interval answers and then runs format_as_integer on them, "
                "which sigllm cannot do (it raises TypeError on a list); drop one of the two."
            )

    def _check_trunc_fits(self, after: list[str]) -> None:
        """A reader keeps ``trunc`` values of each answer: more than a window has steps is a
        forecast no model is asked for, and each window's answers are stored ``trunc`` wide."""
        window = self.window_setting()
        for block in after:
            trunc = self._block_params(block).get("trunc") if block.split("#")[0] in _READERS else None
            if window and isinstance(trunc, int) and trunc > window[1]:
                raise ConfigError(
                    f"{block}.trunc={trunc}: more values per answer than a window has steps "
                    f"({window[0]}.window_size={window[1]}); sigllm's pipelines keep 1."
                )

    def _check_multivariate_formats(self, pipeline: str, after: list[str]) -> None:
        """sigllm's multivariate formats as sigray can check their answers: the JSON format,
        value concatenation, the univariate control and the two interleave formats, each read
        after the LLM step by the format that wrote the windows, keeping ``trunc`` target values
        (without it, or with JSON's ``steps_ahead``, sigllm's readers return ragged lists or a
        dict, which its Scalar2Float cannot convert)."""
        readers = {n for n in after if n.startswith(_MULTIVARIATE_FORMATTING) and "format_as_integer" in n}
        if any(_format_method(n) == "persistence_control" for n in after):
            raise ConfigError(f"pipeline {pipeline!r} reads LLM answers with persistence_control." + _PERSISTENCE_NOTE)
        if len(readers) > 1:
            raise ConfigError(f"pipeline {pipeline!r} reads answers with {len(readers)} formats; sigray checks one.")
        reader = self._json_block or self._reader_block
        if reader is None:
            return
        if _format_method(self._writer_block or "") != _format_method(reader):
            wrote = _format_method(self._writer_block) if self._writer_block else "another format"
            raise ConfigError(
                f"pipeline {pipeline!r} writes its windows with {wrote} and reads answers with "
                f"{_format_method(reader)}: sigllm would read a format the model was not shown. "
                "Use the same format's format_as_string before the LLM step and format_as_integer after it."
            )
        params = self._block_params(reader)
        if params.get("trunc") is None or params.get("steps_ahead") is not None:
            raise ConfigError(
                f"pipeline {pipeline!r}: {reader}.trunc is {params.get('trunc')} and steps_ahead "
                f"{params.get('steps_ahead')}; sigray needs trunc (target values kept per answer) and no "
                "steps_ahead: without trunc or with steps_ahead sigllm's format_as_integer returns ragged lists "
                f"or a dict, which its Scalar2Float cannot convert. Set --param {reader}.trunc=1."
            )
        for block in filter(None, (self._writer_block, reader)):
            separator = self._block_params(block).get("separator", ",")
            if separator != ",":
                raise ConfigError(
                    f"{block}.separator={json.dumps(separator)}: sigray checks sigllm's multivariate "
                    "formats with their default separator ','; drop the setting."
                )
        columns = {
            block: self._block_params(block).get("target_column")
            for block in (self._block("rolling_window_sequences#1"), self._writer_block, reader)
            if block and "target_column" in self._block_params(block)
        }
        if len({json.dumps(c) for c in columns.values()}) > 1:
            given = ", ".join(f"{block}.target_column={json.dumps(c)}" for block, c in columns.items())
            raise ConfigError(
                f"pipeline {pipeline!r} forecasts one channel and compares it with another ({given}): sigllm "
                "scores the reader's channel against the rolling window's target. Give every block the same "
                "target_column."
            )

    @property
    def multivariate(self) -> bool:
        """Reads every channel of a multichannel signal: sigllm's multivariate formats
        (``sigllm.primitives.formatting``, the JSON detector) or a prompter answering with
        index ranges (``mistral_prompter_multivariate_0shot``). Other pipelines read one."""
        formats = any(p.startswith(_MULTIVARIATE_FORMATTING) for p in self.spec["primitives"] if isinstance(p, str))
        ranges = self.family == "prompter" and bool(self._block_params(self._parse_block).get("interval"))
        return formats or ranges

    @property
    def family(self) -> str:
        """``detector`` (forecasts) or ``prompter`` (asks for anomalies)."""
        return self.step.family

    @property
    def needs_normal(self) -> bool:
        """One-shot prompters take a normal reference signal as a second input."""
        return any(v == "normal" for block in self.spec.get("input_names", {}).values() for v in block.values())

    # -- parameters ---------------------------------------------------------

    def _block_params(self, block: str | None, spec: dict | None = None) -> dict:
        """A block's hyperparameters as MLBlocks resolves them: the primitive's defaults
        (fixed and tunable), then the pipeline's ``init_params``."""
        from mlblocks.discovery import load_primitive

        if block is None:
            return {}
        annotation = load_primitive(block.split("#")[0])
        params = {}
        for kind in ("fixed", "tunable"):
            params.update({k: v.get("default") for k, v in annotation.get("hyperparameters", {}).get(kind, {}).items()})
        params.update((spec or self.spec).get("init_params", {}).get(block, {}))
        return params

    def _param_of(self, suffix: str, name: str, default=None):
        block = self._block(suffix)
        return self._block_params(block).get(name, default)

    def _block(self, suffix: str) -> str | None:
        return next((n for n in block_names(self.spec["primitives"]) if n.endswith(suffix)), None)

    def window_setting(self) -> tuple[str, int] | None:
        """(block, window_size) of the pipeline's rolling windows; None when it has none."""
        block = self._block("rolling_window_sequences#1")
        return None if block is None else (block, int(self._block_params(block).get("window_size", 0)))

    def min_points(self) -> int:
        """Points (after aggregation) a signal needs for one window."""
        window = int(self._param_of("rolling_window_sequences#1", "window_size", 0))
        return window + int(self._param_of("rolling_window_sequences#1", "target_size", 0))

    @property
    def llm_params(self) -> dict:
        return self._block_params(self.llm_block)

    def generation_spec(self) -> dict:
        """The part of the pipeline that decides a window's answers: every block up to and
        including the LLM step, with its parameters and wiring."""
        names = block_names(self.spec["primitives"])[: self._llm_index + 1]
        return {
            "primitives": self.spec["primitives"][: self._llm_index + 1],
            "init_params": {b: p for b, p in self.spec.get("init_params", {}).items() if b in names},
            "input_names": {b: p for b, p in self.spec.get("input_names", {}).items() if b in names},
            "output_names": {b: p for b, p in self.spec.get("output_names", {}).items() if b in names},
        }

    def detection_settings(self) -> dict:
        """Everything after the LLM step, resolved (defaults included): a result set's identity."""
        names = block_names(self.spec["primitives"])[self._llm_index + 1 :]
        return {
            "primitives": self.spec["primitives"][self._llm_index + 1 :],
            "params": {b: self._block_params(b) for b in names},
            "input_names": {b: p for b, p in self.spec.get("input_names", {}).items() if b in names},
            "output_names": {b: p for b, p in self.spec.get("output_names", {}).items() if b in names},
            "fix_error_units": self.fix_units,
        }

    def detection_name(self, reference_spec: dict | None = None) -> str:
        """The detection settings in a few words: what differs from ``reference_spec``'s (the
        pipeline the store was made with: a pipeline JSON or dict edited since names its edits),
        else from the pipeline's own."""
        ours = self.detection_settings()
        stock = SigllmPipeline(self.name, base_spec=reference_spec or self.base_spec).detection_settings()
        changes = settings_changes(stock, ours)
        return (
            ", ".join(f"{key}={new if isinstance(new, str) else canonical_json(new)}" for key, _, new in changes)
            or "defaults"
        )

    def answer_format(self, channels: int = 1) -> AnswerFormat:
        """How every window's answers are asked for and checked (rules only; each window's
        limits follow from the window itself, ``AnswerFormat.limits``). ``channels``: the
        run's signals' (sigllm's value-concatenation and interleave formats write each step's
        channels side by side)."""
        llm = self.llm_params
        parse = self._block_params(self._format_block)
        sep = llm.get("sep", ",")
        if self._json_block:
            params = self._block_params(self._json_block)
            return JsonForecastAnswers(trunc=int(params["trunc"]), target_column=int(params.get("target_column") or 0))
        if self._reader_block:
            params = self._block_params(self._reader_block)
            method = _format_method(self._reader_block)
            return FormattedForecastAnswers(
                method=method,
                trunc=int(params["trunc"]),
                target_column=int(params.get("target_column") or 0),
                channels=channels,
            )
        if self.family == "detector":
            return ForecastAnswers(
                sep=sep,
                trunc=parse.get("trunc"),
                errors=parse.get("errors", "ignore"),
                steps=int(llm.get("steps", 1)),
                continuation=self.step.primitive == FORECAST_HF,
                spaced=bool(self._param_of("format_as_string#1", "space", False)),
            )
        return AnomalyAnswers(
            sep=sep,
            parsed=self._parse_block is not None,
            interval=bool(self._block_params(self._parse_block).get("interval", False)),
            window_size=int(self._param_of("rolling_window_sequences#1", "window_size", 0)),
            anomalous_percent=float(llm.get("anomalous_percent", 0.5)),
            after_marker=self.step.primitive == PROMPT_HF and not llm.get("restrict_tokens"),
            trunc=parse.get("trunc"),
            errors=parse.get("errors", "ignore"),
        )

    def sampling(self) -> Sampling:
        """How answers are sampled; each window's ``max_tokens`` and regex are set per request."""
        llm = self.llm_params
        return Sampling(
            n=int(llm.get("samples", 1)),
            temperature=float(llm.get("temp", 1.0)),
            top_p=float(llm.get("top_p", 1.0)),
            chat=self.step.is_chat(llm),
        )

    # -- checks on a signal, before any preprocessing ---------------------------

    def check_signal(self, signal: Signal) -> list[str]:
        """Refuse a signal sigllm's preprocessing would silently corrupt; return warnings on odd data.

        Raises InputError when ``Float2Scalar``'s integers overflow (sigllm casts to int64:
        every prompt would read -9223372036854775808) or the signal is too short for one
        window. Warns when aggregation would impute more than half of the points.
        """
        self._check_channels(signal)
        self._check_scaled_integers(signal)
        interval = self._param_of("time_segments_aggregate#1", "interval", None)
        notes = []
        points = len(signal.timestamps)
        if interval:
            times = np.asarray(signal.timestamps, dtype="float64")
            first = times.min()
            points = int((times.max() - first) // interval) + 1
            filled = len(np.unique((times - first) // interval))
            if points > 1 and filled < points / 2:
                notes.append(
                    f"signal {signal.name!r}: aggregating to {_duration(interval)} leaves {points - filled:,} of "
                    f"{points:,} points empty, which sigllm imputes; are its timestamps in seconds?"
                )
        if points < self.min_points():
            raise InputError(self.too_short(signal, points))
        return notes

    def _check_channels(self, signal: Signal) -> None:
        if signal.channels > 1 and not self.multivariate:
            raise InputError(
                f"signal {signal.name!r} has {signal.channels} channels and pipeline {self.name!r} reads one: sigllm "
                "would write every channel into each window as if it were one series. Give the channel to detect "
                "on as 'timestamp,value', or use a multivariate pipeline (multivariate_mistral_detector_jsonformat, "
                "mistral_prompter_multivariate_0shot)."
            )
        if _format_method(self._reader_block or "") == "value_concatenation":
            num_dims = self._block_params(self._reader_block).get("num_dims")
            if num_dims != signal.channels:
                reads = "without num_dims set" if num_dims is None else f"as {num_dims} per step"
                raise InputError(
                    f"signal {signal.name!r} has {signal.channels} channel(s) and sigllm's value_concatenation reads "
                    f"answers {reads}; set --param {self._reader_block}.num_dims={signal.channels}."
                )
        target = self._param_of("rolling_window_sequences#1", "target_column", 0)
        if self.multivariate and isinstance(target, int) and not 0 <= target < signal.channels:
            raise InputError(
                f"signal {signal.name!r} has {signal.channels} channel(s) and pipeline {self.name!r} forecasts "
                f"channel {target} (rolling_window_sequences target_column); give a signal with that channel."
            )

    def too_short(self, signal: Signal, points: int | None = None) -> str:
        """Why ``signal`` gives no window, with the parameters that change it."""
        interval = self._param_of("time_segments_aggregate#1", "interval", None)
        if points is None:
            times = np.asarray(signal.timestamps, dtype="float64")
            points = int((times.max() - times.min()) // interval) + 1 if interval else len(times)
        block = self._block("rolling_window_sequences#1")
        window = self._param_of("rolling_window_sequences#1", "window_size", 0)
        aggregate = self._block("time_segments_aggregate#1")
        where = f"aggregated to {_duration(interval)} ({aggregate}.interval={interval}) " if interval else ""
        change = f"--param {aggregate}.interval=<seconds> or " if interval else ""
        return (
            f"signal {signal.name!r} is too short for one window of pipeline {self.name!r}: {where}it has "
            f"{points} point(s), and one window needs {self.min_points()} ({block}.window_size={window} plus the "
            f"target). Give a longer signal, or {change}--param {block}.window_size=<points>."
        )

    def _check_scaled_integers(self, signal: Signal) -> None:
        block = self._block("Float2Scalar#1")
        if block is None:
            return
        params = self._block_params(block)
        decimal, rescale = int(params.get("decimal", 2)), bool(params.get("rescale", True))
        values = np.asarray(signal.values, dtype="float64")
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        reach = (high - low) if rescale else max(abs(low), abs(high))
        worst = high if rescale or abs(high) >= abs(low) else low
        if reach * 10.0**decimal < _INT64_LIMIT:
            return
        fits = math.floor(math.log10(_INT64_LIMIT / reach)) if reach > 0 else decimal
        advice = f"Use --param {block}.decimal={fits} or less" if fits >= 0 else "Rescale the signal first"
        raise InputError(
            f"signal {signal.name!r}: value {worst:g} becomes {reach * 10.0**decimal:.3g} once sigllm scales it to "
            f"integers ({block}.decimal={decimal}{', minus the minimum' if rescale else ''}), past int64's "
            f"{_INT64_LIMIT:.3g}: every prompt would be garbage. {advice}."
        )

    # -- the two halves -----------------------------------------------------

    def _build(self):
        use_sigllm_registry()  # also in a process that received this pipeline pickled (a Ray task)
        spec = copy.deepcopy(self.spec)
        from mlblocks.discovery import load_primitive

        boundary = copy.deepcopy(load_primitive(spec["primitives"][self._llm_index]))
        boundary["primitive"] = _BOUNDARY
        boundary["produce"]["method"] = "produce"
        boundary.pop("fit", None)
        spec["primitives"][self._llm_index] = boundary
        from sigray.pipelines.format_methods import STAND_INS

        stand_ins = {**REPLACEMENTS, **STAND_INS}
        for i, primitive in enumerate(spec["primitives"]):
            if isinstance(primitive, str) and primitive in stand_ins:
                annotation = copy.deepcopy(load_primitive(primitive))
                annotation["primitive"] = stand_ins[primitive]
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
            width = None
            if _format_method(self._writer_block or "") in INTERLEAVE_FORMATS:
                width = pipeline.blocks[self._writer_block].instance.metadata["width_used"]
            return SignalPlan(
                signal=signal, windows=windows, prompts=prompts, context=reached.context, width_used=width
            )
        except SigrayError:
            raise
        except Exception as exc:  # noqa: BLE001 - sigllm's and MLBlocks' code: named, not a traceback
            raise WindowingError(
                signal.name, f"sigllm could not window signal {signal.name!r} ({type(exc).__name__}: {exc})."
            ) from exc
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
        if plan.width_used is not None:
            # sigllm's interleave readers take the width from their writer's instance; in an
            # MLBlocks pipeline each block has its own, so stock sigllm raises KeyError here.
            pipeline.blocks[self._reader_block].instance.metadata["width_used"] = plan.width_used
        from orion.core import Orion

        forecast_output = "numpy.reshape#1"  # the context right after it holds y_hat
        has_forecast = forecast_output in pipeline.blocks
        with warnings.catch_warnings():
            # Orion's find_anomalies trips a pandas FutureWarning per window, and its dynamic
            # threshold's fmin search a RuntimeWarning per step; not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
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


def settings_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(short key, old value, new value) for each detection parameter that differs."""
    changes = []
    for block in sorted(set(old.get("params", {})) | set(new.get("params", {}))):
        a, b = old.get("params", {}).get(block, {}), new.get("params", {}).get(block, {})
        short = block.rsplit(".", 1)[-1]
        for key in sorted(set(a) | set(b)):
            if canonical_json(a.get(key)) != canonical_json(b.get(key)):
                changes.append((f"{short}.{key}", a.get(key), b.get(key)))
    if old.get("fix_error_units") != new.get("fix_error_units"):
        changes.append(("fix_error_units", old.get("fix_error_units"), new.get("fix_error_units")))
    if old.get("primitives") != new.get("primitives") and not changes:
        changes.append(("primitives", len(old.get("primitives", [])), len(new.get("primitives", []))))
    return changes


def _duration(seconds) -> str:
    seconds = float(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds:g} s"


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"start": pd.Series(dtype="int64"), "end": pd.Series(dtype="int64"), "severity": []})
