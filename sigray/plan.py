"""Everything decided before any engine starts: signals, windows, requests, identities.

Planning runs sigllm's own preprocessing. It is deterministic, so a resumed run plans
again and gets the same windows; a signal the store holds settled with the same data is
not preprocessed again unless it is post-processed. Each window's request (its prompt and answer limits)
is keyed by content under the *generation identity*, what decides answers: the same
window asks the same thing, and is answered once, in any signal and any store.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from sigray.config import RunConfig, fingerprint
from sigray.engines import Sampling
from sigray.errors import ConfigError, InputError, SigrayWarning
from sigray.keys import window_key, window_seed
from sigray.pipelines.answers import AnswerFormat, sampling_for
from sigray.pipelines.sigllm_pipeline import SigllmPipeline, SignalPlan
from sigray.signals import Signal, load_signals, name_of
from sigray.store import NewSignal, WindowRequest

PLAN_MEMORY_MB = 1024.0  # default of $SIGRAY_PLAN_MEMORY_MB


def plan_memory_mb() -> float:
    """What a plan keeps of its signals' preprocessing (windows, prompts, MLBlocks context) in
    the driver's memory, in MB: ``$SIGRAY_PLAN_MEMORY_MB``, else 1024. Past it, a signal is
    preprocessed again where it is used (written to the store, post-processed) and dropped
    after, so a run of a million windows does not hold every prompt (issue 16.2;
    benchmarks/README.md "Driver memory"). Raises ConfigError for a value that is no size."""
    text = os.environ.get("SIGRAY_PLAN_MEMORY_MB", "").strip()
    if not text:
        return PLAN_MEMORY_MB
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(
            f"SIGRAY_PLAN_MEMORY_MB={text!r}: expected megabytes, 0 or more (0 keeps no signal's preprocessing "
            "in memory); unset it for the default, 1024."
        )
    return value


@dataclass
class RunPlan:
    """A planned run: its signals' windows and the two identities that name its work.

    ``identity``/``fingerprint``: the generation (what decides answers); a store holds one.
    ``detection``/``detection_fingerprint``: what post-processing does with the answers;
    each is a result set of its own in the store.
    """

    config: RunConfig
    pipeline: SigllmPipeline
    plans: list[PlannedSignal]
    answers: AnswerFormat
    sampling: Sampling
    identity: dict
    fingerprint: str
    detection: dict
    detection_fingerprint: str
    normal: Signal | None = None
    planning_s: float = 0.0  # how long make_plan took (reading and preprocessing the signals)
    memory_mb: float = PLAN_MEMORY_MB  # preprocessing kept in memory, at most

    def samplings(self, signal_plan: PlannedSignal, constrained: bool | None = None) -> list[Sampling]:
        """Each window's sampling (its own token budget and, when constrained, regex), as workers ask."""
        constrained = self.config.constrained if constrained is None else constrained
        return [
            sampling_for(self.sampling, self.answers, r.max_digits, r.max_tokens, constrained)
            for r in signal_plan.requests
        ]

    def seeds(self, signal_plan: PlannedSignal, attempt: int = 0) -> list[int]:
        """Each window's seed at ``attempt``, as the coordinator hands them out."""
        return [window_seed(self.config.seed, r.key, attempt) for r in signal_plan.requests]

    def new_signal(self, plan: PlannedSignal) -> NewSignal:
        signal = plan.signal
        values = signal.values.reshape(len(signal.values), -1)
        return NewSignal(signal.name, signal.digest(), signal.timestamps, values, plan.requests)


def generation_identity(config: RunConfig, pipeline: SigllmPipeline, answers: AnswerFormat, normal) -> dict:
    """What decides a window's answers and which answers are valid (stored in the store,
    compared on reopen); signals and detection settings are not in it."""
    sampling = pipeline.sampling()
    return {
        "store_format_version": 2,
        "pipeline": pipeline.name,
        "generation_spec": pipeline.generation_spec(),
        "answers": answers.identity,
        "sampling": {
            "n": sampling.n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "chat": sampling.chat,
        },
        **config.answer_settings(),
        "normal": None if normal is None else normal.digest(),
    }


class PlannedSignal:
    """One signal of a run and its sigllm preprocessing (``SignalPlan``'s windows, prompts,
    MLBlocks context, and the keyed requests), run on first use. A signal its store holds
    settled, with the same data under the same generation, is preprocessed only when it is
    post-processed: the cost of a resumed run follows what is left to do (issue 16).

    ``kept``: its preprocessing stays in memory (within ``plan_memory_mb()`` at planning);
    otherwise each use ends with ``done_with``, which drops it. ``asks``: new to the store
    when planned (its windows may be asked of an engine)."""

    def __init__(self, signal: Signal, pipeline: SigllmPipeline, normal, answers: AnswerFormat, generation: str):
        self.signal = signal
        self._pipeline, self._normal, self._answers, self._generation = pipeline, normal, answers, generation
        self.kept = False
        self.asks = False

    def done_with(self) -> None:
        """A use of the preprocessing is over: drop it unless the plan keeps it."""
        if not self.kept:
            self.__dict__.pop("preprocessed", None)

    def held_mb(self) -> float:
        """About what the preprocessing holds in memory (prompts, windows, the context's arrays)."""
        if not self.is_preprocessed:
            return 0.0
        plan = self.preprocessed
        texts = {id(text): len(text) + 49 for text in (*plan.prompts, *plan.windows)}  # often the same objects
        arrays = sum(v.nbytes for v in plan.context.values() if isinstance(v, np.ndarray))
        return (sum(texts.values()) + 200 * len(plan.requests) + arrays) / 2**20  # a request: its key and object

    @functools.cached_property
    def preprocessed(self) -> SignalPlan:
        """Raises InputError when the signal is too short for one window."""
        plan = self._pipeline.plan(self.signal, self._normal)
        if plan.n_windows == 0:
            raise InputError(self._pipeline.too_short(self.signal))
        plan.requests = requests_of(plan, self._answers, self._generation)
        return plan

    @property
    def is_preprocessed(self) -> bool:
        return "preprocessed" in self.__dict__

    @property
    def windows(self) -> list[str]:
        return self.preprocessed.windows

    @property
    def prompts(self) -> list[str]:
        return self.preprocessed.prompts

    @property
    def context(self) -> dict:
        return self.preprocessed.context

    @property
    def requests(self) -> list[WindowRequest]:
        return self.preprocessed.requests

    @property
    def n_windows(self) -> int:
        return self.preprocessed.n_windows


def requests_of(plan: SignalPlan, answers: AnswerFormat, generation: str) -> list[WindowRequest]:
    requests = []
    for window, prompt in zip(plan.windows, plan.prompts):
        max_digits, max_tokens = answers.limits(window)
        requests.append(
            WindowRequest(window_key(generation, prompt, max_digits, max_tokens), prompt, max_digits, max_tokens)
        )
    return requests


def make_pipeline(config: RunConfig, base_spec: dict | None = None) -> SigllmPipeline:
    return SigllmPipeline(
        config.pipeline, config.pipeline_params, fix_units=config.fix_error_units, base_spec=base_spec
    )


def _load(sources: list, unit: str | None, rejected: dict[str, str] | None) -> list[Signal]:
    if rejected is None:
        return load_signals(sources, unit=unit)
    signals = []
    for source in sources:
        name = source[0] if isinstance(source, tuple) else name_of(os.fspath(source))
        with _or_rejected(rejected, str(name)):
            signals.extend(load_signals([source], unit=unit))
    return signals


def _check_same_channels(signals: list[Signal]) -> None:
    """The signals of one run share their channel count (issue 18): a run is one layout of
    data, and a mix is more likely a wrong file than a plan. A benchmark (``rejected``) is
    exempt: its datasets are independent rows, and NASA's SMAP (25) and MSL (55) one folder."""
    for signal in signals[1:]:
        if signal.channels != signals[0].channels:
            raise InputError(
                f"signal {signal.name!r} has {signal.channels} channel(s) and {signals[0].name!r} has "
                f"{signals[0].channels}: the signals of one run share their channels. Run each layout in a "
                "store of its own, or compare them with sigray benchmark."
            )


@contextlib.contextmanager
def _or_rejected(rejected: dict[str, str] | None, name: str):
    """Refuse the run (InputError) as usual, or, given ``rejected``, name the signal there and go on."""
    try:
        yield
    except InputError as exc:
        if rejected is None:
            raise
        rejected[name] = str(exc)


def make_plan(
    config: RunConfig,
    sources: list,
    base_spec: dict | None = None,
    normal: Signal | None = None,
    settled: Callable[[str], Mapping[str, str]] | None = None,
    rejected: dict[str, str] | None = None,
    on_planned: Callable[[int, int], None] | None = None,
) -> RunPlan:
    """Load and check the signals, window them with sigllm, and name the run's work.

    ``on_planned(k, n)`` is called as each of the ``n`` signals is windowed (progress, for
    runs of hundreds of signals).

    ``settled``: given the generation's fingerprint, the signals (name -> data digest) the
    run's store holds under it with every window settled (``sigray.prepare.settled_signals``);
    those are preprocessed only when first used (to post-process), every other signal here.

    ``rejected``: when given, a signal that cannot be read or windowed is left out of the
    plan and named there (name -> why) instead of refusing the run (``sigray.benchmark``).

    Raises InputError (bad or too-short signals, values sigllm cannot scale) or
    ConfigError (unknown pipeline, bad parameters) before anything is written or started;
    odd but usable data is a ``SigrayWarning``.
    """
    started = time.perf_counter()
    budget_mb = plan_memory_mb()
    pipeline = make_pipeline(config, base_spec)
    signals = _load(sources, config.timestamp_unit, rejected)
    if rejected is None:
        _check_same_channels(signals)
    if normal is None and config.normal:
        normal = load_signals([config.normal], unit=config.timestamp_unit)[0]
    if normal is not None and not pipeline.needs_normal:
        raise ConfigError(f"pipeline {config.pipeline!r} takes no normal reference signal; drop --normal.")
    if normal is None and pipeline.needs_normal:
        raise InputError(
            f"pipeline {config.pipeline!r} is one-shot: it needs a normal reference signal "
            "(a CSV of timestamp,value without anomalies; --normal FILE, or normal= in the API)."
        )
    for signal in signals:
        with _or_rejected(rejected, signal.name):
            for note in list(pipeline.check_signal(signal)):
                warnings.warn(note, SigrayWarning, stacklevel=2)
    signals = [signal for signal in signals if signal.name not in (rejected or {})]
    answers = pipeline.answer_format(channels=signals[0].channels if signals else 1)
    for signal in signals[1:]:  # a benchmark's (a run's share their channels): the format asks by them
        if getattr(answers, "channels", None) not in (None, signal.channels):
            with _or_rejected(rejected, signal.name):
                raise InputError(
                    f"signal {signal.name!r} has {signal.channels} channel(s): this pipeline's answers are asked "
                    f"by the {answers.channels} of {signals[0].name!r}; benchmark each layout apart."
                )
    signals = [signal for signal in signals if signal.name not in (rejected or {})]
    identity = generation_identity(config, pipeline, answers, normal)
    generation = fingerprint(identity)
    known = settled(generation) if settled else {}
    plans = [PlannedSignal(signal, pipeline, normal, answers, generation) for signal in signals]
    held_mb = 0.0
    for k, plan in enumerate(plans, 1):
        if known.get(plan.signal.name) != plan.signal.digest():
            with _or_rejected(rejected, plan.signal.name):
                plan.preprocessed  # noqa: B018 - new to the store: refused now if it cannot be windowed
                plan.asks = True
                size = plan.held_mb()
                plan.kept = held_mb + size <= budget_mb
                held_mb += size if plan.kept else 0.0
                plan.done_with()
        if on_planned is not None:
            on_planned(k, len(plans))
    plans = [plan for plan in plans if plan.signal.name not in (rejected or {})]
    detection = pipeline.detection_settings()
    return RunPlan(
        config=config,
        pipeline=pipeline,
        plans=plans,
        answers=answers,
        sampling=pipeline.sampling(),
        identity=identity,
        fingerprint=generation,
        detection=detection,
        detection_fingerprint=fingerprint(detection),
        normal=normal,
        planning_s=time.perf_counter() - started,
        memory_mb=budget_mb,
    )
