"""The public Python API: ``sigray.run``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sigray.config import RunConfig
from sigray.engines import engine_class
from sigray.errors import ConfigError
from sigray.messages import Progress
from sigray.plan import make_plan
from sigray.runner import RunResult, execute


def run(
    signals: list,
    store: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
    **settings,
) -> RunResult:
    """Detect anomalies in ``signals`` with a SigLLM pipeline, resumably.

    Args:
        signals: CSV paths (``timestamp,value``), ``(name, DataFrame)`` pairs, or Signals.
        store: the run's Zarr store directory. Running again with the same store and
            settings resumes; other settings on an existing store are refused.
        on_progress: called about once a second with a ``Progress`` while windows run.
        deadline_s: stop gracefully (flush, return ``stopped=True``) after this long.
        ray_options: keyword arguments for ``ray.init`` when Ray is not running yet.
        **settings: any ``RunConfig`` field (pipeline, model, engine, workers, ...).

    Returns a RunResult: ``.anomalies[name]`` is a DataFrame of start, end, severity
    (sigllm's shape), ``.signals[name].failed_windows`` lists windows left unanswered.
    Raises InputError, ConfigError, ModelNotFoundError or StoreError before any engine
    starts when the input, settings, model or store cannot be used.
    """
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; see sigray.RunConfig for the settings a run takes.")
    config = RunConfig(store=store, **settings)
    if config.model is None:
        config = config.replace(model=_default_model(config.engine))
    engine_class(config.engine)  # an unknown engine fails here, not in a worker
    plan = make_plan(config, list(signals))
    model_path = resolve_engine_model(config)
    return execute(plan, model_path, on_progress=on_progress, deadline_s=deadline_s, ray_options=ray_options)


def _default_model(engine: str) -> str:
    if engine != "vllm":
        return ""
    from sigray.models import default_model

    return default_model()


def resolve_engine_model(config: RunConfig) -> str:
    """What the workers load: for vLLM a local model directory (packaged models converted once)."""
    if config.engine != "vllm":
        return config.model
    from sigray.models import resolve_model

    return resolve_model(config.model)
