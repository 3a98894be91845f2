"""The public Python API: ``sigray.run``, ``sigray.detect``, ``sigray.open``."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

from sigray.config import RunConfig
from sigray.engines import check_ready, engine_class
from sigray.errors import ConfigError, NoWindowFits
from sigray.messages import Progress
from sigray.plan import RunPlan, make_plan
from sigray.pool import WorkerPool
from sigray.prepare import settled_signals
from sigray.progress import ProgressDisplay
from sigray.runner import RunResult, execute
from sigray.signals import signal_from_store


def run(
    signals: list,
    store: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress: bool = True,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
    new: bool = False,
    **settings,
) -> RunResult:
    """Detect anomalies in ``signals`` with a SigLLM pipeline, resumably.

    Args:
        signals: CSV paths (``timestamp,value``), ``(name, path)`` or ``(name, DataFrame)``
            pairs, or Signals.
        store: the run's store (a directory, or an object store URL). Running again resumes;
            windows already answered are never asked again, also when post-processing
            settings change (a new result set), signals are added or extended.
        on_progress: called about once a second with a ``Progress`` while windows run.
        progress: show progress (``sigray.progress``: a widget in Jupyter, a bar on a
            terminal, a line every 5 s in a log); False shows nothing.
        deadline_s: stop gracefully (flush, return ``stopped=True``) after this long.
        ray_options: keyword arguments for ``ray.init`` when Ray is not running yet.
        new: replace what the store holds with a new, empty store first (crash-safe:
            a crash leaves the old store or the new one). Refused while a run holds it.
        **settings: any ``RunConfig`` field (pipeline, model, engine, workers, ...). ``pipeline``
            may also be a pipeline dict (sigllm's JSON, loaded), as ``sigllm.SigLLM`` takes.

    Returns a RunResult: ``.anomalies[name]`` is a DataFrame of start, end, severity
    (sigllm's shape), ``.signals[name].failed_windows`` lists windows left unanswered.
    Raises InputError, ConfigError, ModelNotFoundError or StoreError before anything is
    written or any engine starts when the input, settings, model or store cannot be used.
    sigllm windows the signals as the run goes (the first before it starts): a failure its
    checks do not foresee is a SigrayError naming the signal, with the answers so far saved.
    """
    if not isinstance(progress, bool):
        raise ConfigError(f"progress must be True or False, not {progress!r}.")
    base_spec = settings.get("pipeline") if isinstance(settings.get("pipeline"), dict) else None
    if base_spec is not None:
        settings = {**settings, "pipeline": "custom"}  # as sigray.SigLLM names a pipeline dict
    elif isinstance(settings.get("pipeline"), os.PathLike):
        settings = {**settings, "pipeline": os.fspath(settings["pipeline"])}
    config = run_config(store, settings)
    with ProgressDisplay(quiet=not progress) as planning:
        plan = make_plan(
            config, list(signals), base_spec=base_spec, settled=settled_in(config, new), on_planned=planning.planned
        )
    return run_plan(
        plan, on_progress=on_progress, progress=progress, deadline_s=deadline_s, ray_options=ray_options, new=new
    )


def settled_in(config: RunConfig, new: bool = False):
    """``make_plan``'s ``settled``: what the run's store already holds (nothing when replaced)."""
    return None if new else functools.partial(settled_signals, config.store)


def run_plan(
    plan: RunPlan,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress: bool = False,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
    new: bool = False,
    pool: WorkerPool | None = None,
) -> RunResult:
    """Run a plan from ``make_plan`` (see ``run``): the engine's checks first, then the run.
    ``pool``: workers (engines loaded) kept between runs of this process (``sigray.pool``)."""
    config = plan.config
    model_path = resolve_engine_model(config)
    try:
        check_ready(config.engine, model_path, config.engine_options, _requests(plan))
    except NoWindowFits as exc:
        raise ConfigError(f"{exc}{_fitting_window(plan, exc)}") from None
    with ProgressDisplay(quiet=not progress) as display:
        report = display if on_progress is None else lambda p: (display(p), on_progress(p))
        return execute(
            plan, model_path, on_progress=report, deadline_s=deadline_s, ray_options=ray_options, new=new, pool=pool
        )


def detect(store: str, *, pipeline_params: dict | None = None, fix_error_units: bool | None = None) -> RunResult:
    """Post-process the answers a store holds again, with other detection settings.

    No signal files, no engine, no GPU: the store holds the signals and every answer.
    ``pipeline_params`` are applied on top of the store's own (``{"block#1": {"param":
    value}}``); only settings after the LLM step may change (others would need new
    answers: ``sigray.run``). The result is a new result set beside the others; signals
    whose windows are not all settled come back ``missing``.
    """
    plan = plan_from_store(store, pipeline_params, fix_error_units)
    return execute(plan, None, compute=False)


def plan_from_store(path: str, pipeline_params: dict | None = None, fix_error_units: bool | None = None) -> RunPlan:
    """The plan of the run a store holds, rebuilt from the store alone, with detection changes."""
    from sigray.store import RunStore, StoreFormatError
    from sigray.store.run_store import mismatch_error

    try:
        store = RunStore.open(path)
    except StoreFormatError as exc:
        if exc.version != 1:
            raise
        raise ConfigError(
            f"store {path} has format 1; run `sigray run` once with its signals and settings to migrate it, "
            "then detect works from the store alone."
        ) from None
    stored = {k: v for k, v in store.config.items() if k in {f.name for f in dataclasses.fields(RunConfig)}}
    params = {block: dict(values) for block, values in stored.get("pipeline_params", {}).items()}
    for block, values in (pipeline_params or {}).items():
        params.setdefault(block, {}).update(values)
    changes = {"store": store.path, "pipeline_params": params, "normal": None, "timestamp_unit": None}
    if fix_error_units is not None:
        changes["fix_error_units"] = fix_error_units
    config = RunConfig(**{**stored, **changes})
    sources = [signal_from_store(entry.name, *store.read_signal(entry)) for entry in store.signals]
    normal_data = store.read_normal()
    normal = None if normal_data is None else signal_from_store("normal", *normal_data)

    def stored(generation: str) -> dict[str, str]:  # detect computes nothing: preprocess only what it post-processes
        return {e.name: e.digest for e in store.signals} if generation == store.fingerprint else {}

    plan = make_plan(config, sources, base_spec=store.meta.get("pipeline_base_spec"), normal=normal, settled=stored)
    if plan.fingerprint != store.fingerprint:
        error = mismatch_error(store.path, store.identity, plan.identity)
        raise ConfigError(
            f"{error}\n(detect re-runs post-processing only; settings up to the LLM step change answers: "
            "use `sigray run` with the signals for those.)"
        )
    return plan


def _fitting_window(plan: RunPlan, exc: NoWindowFits) -> str:
    """The window_size whose prompts would fit, estimated as prompts shrink with their window
    (a multivariate window of K channels costs K times a univariate one)."""
    setting = plan.pipeline.window_setting()
    if setting is None or exc.shortest <= 0:
        return ""
    block, window = setting
    fitting = int(window * exc.room / exc.shortest)
    if fitting < 1 or fitting >= window:
        return ""
    return f"; a window_size of about {fitting} would fit: --param {block}.window_size={fitting}"


def run_config(store: str, settings: dict) -> RunConfig:
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; see sigray.RunConfig for the settings a run takes.")
    config = RunConfig(store=store, **{"engine": default_engine(), **settings})
    if config.model is None:
        config = config.replace(model=_default_model(config.engine))
    engine_class(config.engine)  # an unknown engine fails here, not in a worker
    return config


def default_engine() -> str:
    """The engine a run without one uses: ``$SIGRAY_ENGINE`` (a machine's or a notebook's
    choice, as for the drop-in ``SigLLM``, whose signature has no engine), else vLLM."""
    return os.environ.get("SIGRAY_ENGINE") or "vllm"


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


__all__ = ["detect", "plan_from_store", "resolve_engine_model", "run", "run_config", "run_plan", "settled_in"]


def _requests(plan: RunPlan):
    """Each window's (prompt, sampling) an engine may be asked, signal by signal, as workers will
    ask: lazily, since the engine's checks mostly stop at the first. A signal the store holds
    settled (not preprocessed) asks nothing."""
    for signal_plan in (p for p in plan.plans if p.asks):
        for request, sampling in zip(signal_plan.requests, plan.samplings(signal_plan)):
            yield request.prompt, sampling
        signal_plan.done_with()
