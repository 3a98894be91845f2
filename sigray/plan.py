"""Everything decided before any engine starts: signals, windows, prompts, identity.

Planning runs sigllm's own preprocessing in the driver. It is deterministic, so a
resumed run plans again and gets the same windows; the fingerprint proves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sigray.config import RunConfig, fingerprint
from sigray.engines import Sampling
from sigray.errors import ConfigError, InputError
from sigray.pipelines.answers import AnswerFormat
from sigray.pipelines.sigllm_pipeline import SigllmPipeline, SignalPlan
from sigray.signals import Signal, load_signals
from sigray.store import SignalRange, StoreLayout


@dataclass
class RunPlan:
    config: RunConfig
    pipeline: SigllmPipeline
    plans: list[SignalPlan]
    answers: AnswerFormat
    sampling: Sampling
    identity: dict
    fingerprint: str
    layout: StoreLayout

    @property
    def prompts(self) -> list[str]:
        return [prompt for plan in self.plans for prompt in plan.prompts]


def make_plan(config: RunConfig, sources: list) -> RunPlan:
    """Load and check the signals, window them with sigllm, and name the run.

    Raises InputError (bad or too-short signals) or ConfigError (unknown pipeline,
    bad parameters) before anything is written or started.
    """
    signals: list[Signal] = load_signals(sources)
    pipeline = SigllmPipeline(config.pipeline, config.pipeline_params, fix_units=config.fix_error_units)
    normal = load_signals([config.normal])[0] if config.normal else None
    if normal is not None and not pipeline.needs_normal:
        raise ConfigError(f"pipeline {config.pipeline!r} takes no normal reference signal; drop --normal.")
    plans = [pipeline.plan(signal, normal) for signal in signals]
    empty = [plan.signal.name for plan in plans if plan.n_windows == 0]
    if empty:
        raise InputError(
            f"signal(s) {', '.join(empty)} too short for one window of pipeline {config.pipeline!r} "
            f"(it needs {pipeline.min_points()} points after aggregating to its interval); "
            "give a longer signal or a smaller window_size/interval."
        )
    answers = pipeline.answer_format(plans)
    ranges, offset = [], 0
    for plan in plans:
        ranges.append(SignalRange(plan.signal.name, offset, plan.n_windows))
        offset += plan.n_windows
    sampling = pipeline.sampling(answers, config.constrained)
    identity = config.identity(pipeline.spec, {s.name: s.digest() for s in signals})
    identity["answers"] = answers.identity
    if normal is not None:
        identity["normal"] = normal.digest()
    layout = StoreLayout(
        tuple(ranges), n_samples=sampling.n, horizon=answers.horizon, chunk_windows=config.chunk_windows
    )
    return RunPlan(config, pipeline, plans, answers, sampling, identity, fingerprint(identity), layout)
