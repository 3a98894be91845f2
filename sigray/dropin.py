"""``sigray.SigLLM``: stock sigllm's API, run by sigray (issue 19).

A notebook written for sigllm 0.2.0 runs unchanged after ``from sigray import SigLLM``:
the constructor takes sigllm's ``pipeline, interval, decimal, window_size, hyperparameters``
(mapped onto the same primitives' hyperparameters as ``sigllm/core.py`` maps them) and
``detect(data, normal=None, visualization=False)`` returns sigllm's ``start, end, severity``
DataFrame. What sigray adds is keyword-only: ``store``, ``engine``, ``model``, ``progress``
and any other ``RunConfig`` setting.

The workers, each with its loaded engine, outlive ``detect``: the next call on the same
engine and model, by this ``SigLLM`` or another in the process, starts none (a vLLM engine
takes 40 s or more to start; one pool per process, so idle engines never hold the CPUs or
GPUs another ``SigLLM`` waits for). ``close()``, the end of a ``with SigLLM(...)`` block, or
the end of the process frees them.

Defaults a notebook needs no code for: the model named in the hyperparameters (the LLM
block's ``name``, as sigllm reads ``HF#1.name``), else the machine's default; the engine
``$SIGRAY_ENGINE`` (else vLLM); the store ``$SIGRAY_CACHE/<generation>`` (else
``~/.cache/sigray/<generation>``), one per generation identity (pipeline up to the LLM,
model, sampling), so calling ``detect`` again on the same data resumes instead of computing,
and other data or detection settings reuse every answer already paid for.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import os
import warnings

import pandas as pd

from sigray.config import RunConfig, fingerprint
from sigray.errors import ConfigError, InputError, SigrayError, SigrayWarning
from sigray.pool import WorkerPool
from sigray.signals import signal_from_frame

# sigllm/core.py's keyword arguments and the blocks it sets them on.
INTERVAL_PRIMITIVE = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"
DECIMAL_PRIMITIVE = "sigllm.primitives.transformation.Float2Scalar#1"
WINDOW_SIZE_PRIMITIVE = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"


def default_cache() -> str:
    """Where stores go when none is named: ``$SIGRAY_CACHE``, else ``$XDG_CACHE_HOME/sigray``
    (``~/.cache/sigray``)."""
    configured = os.environ.get("SIGRAY_CACHE")
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "sigray")


class SigLLM:
    """sigllm's ``SigLLM``, each window's answer generated once and kept in a sigray store.

    Args (as sigllm 0.2.0):
        pipeline: a registered pipeline name, a JSON file path, or a pipeline dict
            (default ``mistral_detector``).
        interval: seconds per aggregated point (``time_segments_aggregate#1.interval``).
        decimal: decimals kept when scaling to integers (``Float2Scalar#1.decimal``).
        window_size: points per window (ml-stars' ``rolling_window_sequences#1.window_size``).
        hyperparameters: ``{"block#1": {"name": value}}`` on top of the pipeline's.
    Keyword-only (sigray's): ``store`` (a directory or object-store URL), ``progress``
    (False: no progress bar), ``on_progress``, ``ray_options``, and any ``RunConfig`` field
    (``engine``, ``model``, ``workers``...).

    Raises ConfigError or InputError, as ``sigray.run`` does, before any engine starts.
    """

    DEFAULT_PIPELINE = "mistral_detector"

    def __init__(
        self,
        pipeline: str | dict | None = None,
        interval: int | None = None,
        decimal: int | None = None,
        window_size: int | None = None,
        hyperparameters: dict | None = None,
        *,
        store: str | None = None,
        progress: bool = True,
        on_progress=None,
        ray_options: dict | None = None,
        **settings,
    ):
        pipeline = pipeline or self.DEFAULT_PIPELINE
        if not isinstance(progress, bool):
            raise ConfigError(f"progress must be True or False, not {progress!r}.")
        if not isinstance(pipeline, (str, dict)):
            raise ConfigError(
                f"sigray.SigLLM takes a pipeline name, JSON path or dict, not {type(pipeline).__name__} "
                "(an MLPipeline: pass its to_dict())."
            )
        if hyperparameters is not None and not (
            isinstance(hyperparameters, dict) and all(isinstance(v, dict) for v in hyperparameters.values())
        ):
            raise ConfigError(
                "hyperparameters must be a dict of blocks to dicts of values, as sigllm takes them: "
                "{'mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1': {'interval': 3600}}."
            )
        self._pipeline = pipeline
        self.interval, self.decimal, self.window_size = interval, decimal, window_size
        params = copy.deepcopy(hyperparameters or {})
        for block, key, value in (
            (INTERVAL_PRIMITIVE, "interval", interval),
            (DECIMAL_PRIMITIVE, "decimal", decimal),
            (WINDOW_SIZE_PRIMITIVE, "window_size", window_size),
        ):
            if value:  # as sigllm's _augment_hyperparameters: a falsy value leaves the pipeline's
                params.setdefault(block, {})[key] = value
        self._hyperparameters = params
        self._store, self._on_progress, self._ray_options = store, on_progress, ray_options
        self._progress = progress
        self._settings = settings
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RunConfig)})
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; see sigray.RunConfig for the settings a run takes.")
        self._config(None)  # an unknown pipeline, block or value fails here, as stock's MLPipeline does
        self.last_result = None  # the RunResult of the last detect: windows, failures, timings, store

    def close(self) -> None:
        """Free the idle workers and their engines (processes, GPU memory): this process's, which
        every ``SigLLM`` shares. ``detect`` may still be called: it starts new ones."""
        _WORKERS.close()

    def __enter__(self) -> SigLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self._pipeline if isinstance(self._pipeline, str) else "\n    ".join(self._pipeline["primitives"])
        params = "\n".join(f"    {block}: {values}" for block, values in self._hyperparameters.items()) or None
        return f"SigLLM:\n    {name}\nhyperparameters:\n{params}\n"

    def detect(self, data: pd.DataFrame, normal: pd.DataFrame | None = None, visualization: bool = False, **kwargs):
        """Anomalies in ``data`` (``timestamp,value``, or Orion's ``timestamp,0,...,K-1``):
        a DataFrame of ``start, end, severity``; with ``visualization=True``, ``(events, {})``
        as stock sigllm returns for its pipelines (none names visualization outputs).

        Windows whose answers never validated are left out (stock sigllm would have crashed on
        them) and named in a ``SigrayWarning``. A stopped run (a deadline, SIGTERM) raises
        SigrayError saying how far it got; calling again resumes.
        """
        from sigray.api import run_plan, settled_in
        from sigray.plan import make_plan

        if kwargs:
            raise ConfigError(f"detect takes data, normal and visualization; got also {sorted(kwargs)}.")
        signal = signal_from_frame("data", _frame(data, "data"), where="data")
        reference = None if normal is None else _normal_signal(normal)
        config, spec = self._config(reference)
        # The same data is the same signal: under the name the store gives it (sigray.run's file
        # name), else one made from its digest.
        name = _stored_name(config.store, signal.digest()) or f"data-{signal.digest()[:12]}"
        signal = dataclasses.replace(signal, name=name)
        try:
            plan = make_plan(config, [signal], base_spec=spec, normal=reference, settled=settled_in(config))
            result = run_plan(
                plan,
                on_progress=self._on_progress,
                progress=self._progress,
                ray_options=self._ray_options,
                pool=_WORKERS,
            )
        except (ConfigError, InputError) as exc:
            raise _retold(exc, _in_python_terms(str(exc), config.pipeline)) from None
        _close_at_exit()
        self.last_result = result
        if name not in result.signals:
            raise SigrayError(
                f"the run stopped before {name} was finished ({result.resumed_windows + result.computed_windows} "
                f"of {result.total_windows} windows settled, saved in {config.store}); call detect again to resume."
            )
        failed = result.signals[name].failed_windows
        if failed:
            warnings.warn(
                f"{len(failed)} window(s) never got a valid answer and were left out (positions {failed[:10]}); "
                f"store {config.store}.",
                SigrayWarning,
                stacklevel=2,
            )
        events = result.anomalies[name].reset_index(drop=True)
        return (events, {}) if visualization else events

    def _config(self, normal) -> tuple[RunConfig, dict | None]:
        """The run's settings, the store included (named from the generation identity unless given)."""
        from sigray.api import run_config
        from sigray.plan import generation_identity, make_pipeline

        spec = copy.deepcopy(self._pipeline) if isinstance(self._pipeline, dict) else None
        settings = {
            "pipeline": self._pipeline if isinstance(self._pipeline, str) else "custom",
            "pipeline_params": self._hyperparameters,
            **self._settings,
        }
        config = run_config(self._store or "unnamed", settings)
        try:
            pipeline = make_pipeline(config, spec)
        except ConfigError as exc:
            raise ConfigError(_in_python_terms(str(exc), config.pipeline)) from None
        named = self._hyperparameters.get(pipeline.llm_block, {}).get("name")
        if named and "model" not in self._settings:
            config = config.replace(model=named)
        if self._store is None:
            identity = generation_identity(config, pipeline, pipeline.answer_format(), normal)
            config = config.replace(store=os.path.join(default_cache(), fingerprint(identity)[:16]))
        return config, spec


_WORKERS = WorkerPool()  # one per process: the engines every SigLLM here serves with


@functools.cache
def _close_at_exit() -> None:
    """Close the engines before Ray's own exit hook ends their processes (hooks run last-registered
    first, and Ray registers its hook when it starts, before this)."""
    atexit.register(_WORKERS.close)


def _frame(data, what: str) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise InputError(
            f"{what} must be a pandas DataFrame with 'timestamp' and 'value' columns (or Orion's timestamp,0,1,...), "
            f"as orion.data.load_signal returns; got {type(data).__name__}."
        )
    return data


def _normal_signal(normal: pd.DataFrame):
    """sigllm's one-shot reference: its time column may be named ``normal_timestamp``."""
    frame = _frame(normal, "normal").rename(columns={"normal_timestamp": "timestamp"})
    return signal_from_frame("normal", frame, where="normal")


def _retold(exc: SigrayError, message: str) -> SigrayError:
    """``exc`` with another message, of its own class where that class takes a message alone."""
    try:
        return type(exc)(message)
    except TypeError:
        return (ConfigError if isinstance(exc, ConfigError) else InputError)(message)


def _stored_name(store: str, digest: str) -> str | None:
    """The name of the signal with this data digest in ``store``, if it holds one."""
    from sigray.store import RunStore

    try:
        entries = RunStore.open(store, read_only=True).signals
    except Exception:  # noqa: BLE001 - no store yet, another format: the run itself says what is wrong
        return None
    return next((entry.name for entry in entries if entry.digest == digest), None)


def _in_python_terms(message: str, pipeline: str) -> str:
    """An error as a SigLLM user meets it: keyword arguments, not the CLI's options."""
    if f"no block '{WINDOW_SIZE_PRIMITIVE}'" in message:
        blocks = message.split("its blocks are: ")[-1].rstrip(".").split(", ")
        own = [b for b in blocks if "rolling_window_sequences" in b]
        instead = f"hyperparameters={{'{own[0]}': {{'window_size': N}}}}" if own else "another pipeline"
        return (
            f"window_size= sets {WINDOW_SIZE_PRIMITIVE} (as sigllm does), which pipeline {pipeline!r} does not "
            f"have; use {instead}."
        )
    message = message.replace("or another --store, or --new to start over", "or another store=")
    return message.replace("--param ", "hyperparameters ").replace("--store", "store=")
