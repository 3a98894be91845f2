"""Everything decided before any engine starts: signals, their checks, identities; and each
signal's windows and requests, made with sigllm's own preprocessing where first used.

Preprocessing is deterministic, so a resumed run gets the same windows again; a signal the
store holds with the same data is not preprocessed again unless it is post-processed. Each
window's request (its prompt and answer limits) is keyed by content under the *generation
identity*, what decides answers: the same window asks the same thing, and is answered once,
in any signal and any store.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sigray.config import RunConfig, fingerprint
from sigray.engines import Sampling
from sigray.errors import ConfigError, InputError, SigrayWarning, WindowingError
from sigray.keys import window_key, window_seed
from sigray.pipelines.answers import AnswerFormat, sampling_for
from sigray.pipelines.sigllm_pipeline import SigllmPipeline, SignalPlan
from sigray.signals import Signal, check_unique_names, load_signal, load_signals, name_of
from sigray.store import NewSignal, WindowRequest
from sigray.tasks import tasks_mode

PLAN_MEMORY_MB = 1024.0  # default of $SIGRAY_PLAN_MEMORY_MB


def plan_memory_mb() -> float:
    """What a plan keeps of its signals' data and preprocessing (windows, prompts, MLBlocks
    context) in the driver's memory, in MB: ``$SIGRAY_PLAN_MEMORY_MB``, else 1024. Past it, a
    signal is read again from its file and preprocessed again where it is used (written to the
    store, post-processed) and dropped after, so a run of a million windows does not hold every
    prompt or every signal (issue 16.2;
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
            f"SIGRAY_PLAN_MEMORY_MB={text!r}: expected megabytes, 0 or more (0 keeps no signal's data or preprocessing "
            "in memory); unset it for the default, 1024."
        )
    return value


class MemoryBudget:
    """What a plan keeps in the driver's memory of its signals' data and preprocessing, within
    ``mb`` (``plan_memory_mb()``): whatever is kept makes the signal's next use free."""

    def __init__(self, mb: float):
        self.mb = mb
        self.held_mb = 0.0
        self._charged: dict[str, float] = {}  # signal name -> what it holds now, when kept

    def settle(self, signal_plan: PlannedSignal) -> None:
        """A use of ``signal_plan`` is over (planned, registered): keep its data and preprocessing
        if they fit beside the others kept, else drop them (``PlannedSignal.done_with``)."""
        size = signal_plan.held_mb()
        others = self.held_mb - self._charged.pop(signal_plan.name, 0.0)
        signal_plan.kept = others + size <= self.mb
        if signal_plan.kept:
            self._charged[signal_plan.name] = size
        self.held_mb = others + self._charged.get(signal_plan.name, 0.0)
        signal_plan.done_with()


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
    planning_s: float = 0.0  # how long make_plan took (reading and checking the signals)
    memory: MemoryBudget = field(default_factory=lambda: MemoryBudget(PLAN_MEMORY_MB))

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

    @staticmethod
    def new_signal(plan: PlannedSignal) -> NewSignal:
        """``plan``'s data and windows' requests, packed for ``RunStore.add_signals`` (windowing it here)."""
        signal = plan.signal
        values = signal.values.reshape(len(signal.values), -1)
        return NewSignal(plan.name, plan.digest, signal.timestamps, values, plan.requests)

    def windowing(self) -> tuple:
        """What ``new_signals`` needs besides the signals: sent once to the Ray tasks that window them."""
        return self.pipeline, self.normal, self.answers, self.fingerprint


def new_signals(signals: list[Signal], pipeline, normal, answers, generation: str) -> list[NewSignal]:
    """``signals`` windowed with sigllm and packed for ``RunStore.add_signals``, away from the
    run's plan (``RunPlan.windowing`` gives the rest): what a Ray task returns (``sigray.feed``).
    Raises WindowingError naming a signal sigllm cannot window."""
    plans = [PlannedSignal(signal, pipeline, normal, answers, generation) for signal in signals]
    return [RunPlan.new_signal(plan) for plan in plans]


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

    ``kept``: its data and preprocessing stay in memory (within ``plan_memory_mb()``, decided
    by ``MemoryBudget.settle`` after each use); otherwise each use ends with ``done_with``,
    which drops the preprocessing and, when the signal can be read again from its file
    (``reload``), its data: the driver's memory then follows the budget, not the run's size.
    ``asks``: new to the store when planned (its windows may be asked of an engine).
    ``digest``: the data's (``Signal.digest``), checked again on every reload."""

    def __init__(
        self,
        signal: Signal,
        pipeline: SigllmPipeline,
        normal,
        answers: AnswerFormat,
        generation: str,
        reload: Callable[[], Signal] | None = None,
    ):
        self.name, self.digest, self.channels = signal.name, signal.digest(), signal.channels
        self.n_points = len(signal.timestamps)
        self._signal: Signal | None = signal
        self._reload = reload
        self._pipeline, self._normal, self._answers, self._generation = pipeline, normal, answers, generation
        self.kept = False
        self.asks = False

    @property
    def signal(self) -> Signal:
        """The signal's data, read again from its file when it was dropped. Raises WindowingError
        (this signal cannot be windowed now) when the file is gone, unreadable, or no longer
        holds the data planned (changed while the run ran)."""
        if self._signal is None:
            try:
                signal = self._reload()
            except InputError as exc:
                raise WindowingError(self.name, f"signal {self.name!r}, read again where it is used: {exc}") from None
            if signal.digest() != self.digest:
                raise WindowingError(
                    self.name,
                    f"signal {self.name!r}: its file changed while the run ran (its data is not what was planned); "
                    "run the same command again to plan the new data.",
                )
            self._signal = signal
        return self._signal

    @property
    def holds_data(self) -> bool:
        return self._signal is not None

    def reload_from(self, reload: Callable[[], Signal]) -> None:
        """Read the data, once dropped, with ``reload`` (still checked against ``digest``)."""
        self._reload = reload

    def done_with(self) -> None:
        """A use of the signal is over: drop its preprocessing, and its data when it can be
        read again, unless the plan keeps them."""
        if not self.kept:
            self.__dict__.pop("preprocessed", None)
            if self._reload is not None:
                self._signal = None

    def held_mb(self) -> float:
        """About what the signal holds in memory: its data, and its preprocessing (prompts,
        windows, the context's arrays)."""
        data = 0 if self._signal is None else self._signal.timestamps.nbytes + self._signal.values.nbytes
        if not self.is_preprocessed:
            return data / 2**20
        plan = self.preprocessed
        texts = {id(text): len(text) + 49 for text in (*plan.prompts, *plan.windows)}  # often the same objects
        arrays = sum(v.nbytes for v in plan.context.values() if isinstance(v, np.ndarray))
        return (data + sum(texts.values()) + 200 * len(plan.requests) + arrays) / 2**20  # a request: key, object

    @functools.cached_property
    def preprocessed(self) -> SignalPlan:
        """Raises WindowingError when sigllm gives no window of the signal (too short) or fails on it."""
        plan = self._pipeline.plan(self.signal, self._normal)
        if plan.n_windows == 0:
            raise WindowingError(self.name, self._pipeline.too_short(self.signal))
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


def _source_name(source) -> str:
    if isinstance(source, Signal):
        return source.name
    return str(source[0]) if isinstance(source, tuple) else name_of(os.fspath(source))


def _reloader(source, unit: str | None) -> Callable[[], Signal] | None:
    """How to read a signal given as a file again (None for data given in memory), quietly:
    its warnings were given when it was first read."""
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (str, os.PathLike)):
        path, name = os.fspath(source[1]), str(source[0])
    elif isinstance(source, (str, os.PathLike)):
        path, name = os.fspath(source), None
    else:
        return None

    def reload() -> Signal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SigrayWarning)
            return load_signal(path, name=name, unit=unit)

    return reload


def _check_same_channels(first: PlannedSignal, signal: Signal) -> None:
    """The signals of one run share their channel count (issue 18): a run is one layout of
    data, and a mix is more likely a wrong file than a plan. A benchmark (``rejected``) is
    exempt: its datasets are independent rows, and NASA's SMAP (25) and MSL (55) one folder."""
    if signal.channels != first.channels:
        raise InputError(
            f"signal {signal.name!r} has {signal.channels} channel(s) and {first.name!r} has "
            f"{first.channels}: the signals of one run share their channels. Run each layout in a "
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
    """Load and check the signals and name the run's work; sigllm windows each signal where it
    is first used (registered in the store, post-processed), so the first windows are answered
    while later signals are windowed (issue 16.3).

    ``on_planned(k, n)`` is called as each of the ``n`` signals is read (progress, for runs of
    hundreds of signals).

    ``settled``: given the generation's fingerprint, the signals (name -> data digest) the
    run's store holds under it with every window settled (``sigray.prepare.settled_signals``);
    the others ``ask`` (their windows may go to an engine).

    ``rejected``: when given, a signal that cannot be read or fails its checks is left out of
    the plan and named there (name -> why) instead of refusing the run (``sigray.benchmark``,
    which also leaves out a signal sigllm fails to window later: ``WindowingError``).

    Raises InputError (bad or too-short signals, values sigllm cannot scale: the checks need
    no windowing) or ConfigError (unknown pipeline, bad parameters) before anything is written or started;
    odd but usable data is a ``SigrayWarning``.
    """
    started = time.perf_counter()
    memory = MemoryBudget(plan_memory_mb())
    tasks_mode()  # a bad $SIGRAY_TASKS is refused before anything starts
    pipeline = make_pipeline(config, base_spec)
    if not sources:
        raise InputError("no signals given.")
    names = [_source_name(source) for source in sources]
    check_unique_names(names)
    if normal is None and config.normal:
        normal = load_signals([config.normal], unit=config.timestamp_unit)[0]
    if normal is not None and not pipeline.needs_normal:
        raise ConfigError(f"pipeline {config.pipeline!r} takes no normal reference signal; drop --normal.")
    if normal is None and pipeline.needs_normal:
        raise InputError(
            f"pipeline {config.pipeline!r} is one-shot: it needs a normal reference signal "
            "(a CSV of timestamp,value without anomalies; --normal FILE, or normal= in the API)."
        )
    # One signal at a time, read, checked and windowed, so that the driver holds at most the
    # memory budget of them (a signal given as a file is read again where it is used).
    plans: list[PlannedSignal] = []
    answers = identity = generation = None
    known: Mapping[str, str] = {}
    for k, (name, source) in enumerate(zip(names, sources), 1):
        with _or_rejected(rejected, name):
            signal = load_signals([source], unit=config.timestamp_unit)[0]
            if plans and rejected is None:
                _check_same_channels(plans[0], signal)
            for note in list(pipeline.check_signal(signal)):
                warnings.warn(note, SigrayWarning, stacklevel=2)
            if not plans:  # the first signal planned sets the answers' channels (one rejected does not)
                answers = pipeline.answer_format(channels=signal.channels)
                identity = generation_identity(config, pipeline, answers, normal)
                generation = fingerprint(identity)
                known = settled(generation) if settled else {}
            elif getattr(answers, "channels", None) not in (None, signal.channels):
                raise InputError(  # a benchmark's signals (a run's share their channels): the format asks by them
                    f"signal {signal.name!r} has {signal.channels} channel(s): this pipeline's answers are asked "
                    f"by the {answers.channels} of {plans[0].name!r}; benchmark each layout apart."
                )
            plan = PlannedSignal(
                signal, pipeline, normal, answers, generation, reload=_reloader(source, config.timestamp_unit)
            )
            del signal
            plan.asks = known.get(plan.name) != plan.digest
            memory.settle(plan)
            plans.append(plan)
        if on_planned is not None:
            on_planned(k, len(sources))
    if answers is None:  # every signal rejected (a benchmark's rows say why)
        answers = pipeline.answer_format()
        identity = generation_identity(config, pipeline, answers, normal)
        generation = fingerprint(identity)
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
        memory=memory,
    )
