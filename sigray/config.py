"""One frozen configuration per run, and the fingerprints that name its work.

Fields that change answers (the pipeline up to its LLM step, model, engine and its
answer-changing options, sampling seed, retry budget, constraint) make the store's
*generation identity* (``sigray.plan.generation_identity``); the pipeline after its LLM
step makes a result set's identity; fields that only change speed (workers, batch size,
flush policy) are in neither, so a run may be resumed with more workers or another flush
interval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from sigray.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides its signals.

    Attributes:
        store: where the run's Zarr store lives (a local directory; one store per run).
        pipeline: a sigllm pipeline name, e.g. ``mistral_detector``.
        pipeline_params: hyperparameter overrides in mlblocks form,
            ``{"block#1": {"param": value}}``, applied on top of sigllm's pipeline JSON.
        model: what the engine loads: a local directory, a ``.gguf`` file, the packaged
            ``smollm2``, or a HF hub id. ``None``: the machine's default for vLLM
            (``sigray.models.default_model()``), nothing for other engines.
        engine: ``vllm``, ``test-double`` (deterministic, for tests) or ``module:Class``.
        engine_options: keyword arguments for the engine (e.g. ``max_model_len``).
        max_attempts: retry budget: how many answers a window may get before it is
            marked failed (invalid answers count; lost workers do not).
        seed: base seed; window ``w`` at attempt ``a`` always samples with the same seed.
        constrained: give vLLM the pipeline's regex so answers are well-formed by construction.
        workers: engine workers (Ray actors) to start.
        gpus_per_worker: GPUs each worker reserves; ``None`` = 1 when the cluster has GPUs, else 0.
        cpus_per_worker: CPUs each worker reserves in Ray.
        batch_size: windows handed to a worker per call.
        flush_interval_s: write-behind period; a crash loses at most this much work.
        lease_timeout_s: a batch not answered within this time goes back to the queue.
        load_timeout_s: a worker whose engine has not loaded this long after its process
            started (time waiting for a GPU or a node does not count) is replaced.
        store_lease_s: how long the store's write lease lasts without renewal; another
            host may take over a run whose coordinator vanished after this long.
        chunk_windows: windows per Zarr chunk (fixed when the store is created).
        normal: a CSV (``timestamp,value``) of normal behaviour, the reference that one-shot
            prompters (``mistral_prompter_1shot``) show the model; its content is part of
            the run identity, its path is not.
        fix_error_units: compare forecasts and targets in the same (original) units in
            ``mistral_detector``/``gpt_detector``, where sigllm 0.2.0 compares scaled targets
            with unscaled forecasts. Off by default: faithful to sigllm. See the README.
        timestamp_unit: what numeric timestamps in the signals count: ``s`` (None, the
            default), ``ms``, ``us`` or ``ns``; they are read as seconds.
    """

    store: str
    pipeline: str = "mistral_detector"
    pipeline_params: dict = field(default_factory=dict)
    model: str | None = None
    engine: str = "vllm"
    engine_options: dict = field(default_factory=dict)
    max_attempts: int = 3
    seed: int = 0
    constrained: bool = True
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    batch_size: int = 64
    flush_interval_s: float = 5.0
    lease_timeout_s: float = 900.0
    load_timeout_s: float = 1800.0
    store_lease_s: float = 60.0
    chunk_windows: int = 4096
    normal: str | None = None
    fix_error_units: bool = False
    timestamp_unit: str | None = None

    def __post_init__(self) -> None:
        checks = {  # setting: (valid, the rule)
            "max_attempts": (1 <= self.max_attempts <= 255, "from 1 to 255"),
            "workers": (self.workers >= 1, "at least 1"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "flush_interval_s": (self.flush_interval_s > 0, "above 0"),
            "lease_timeout_s": (self.lease_timeout_s > 0, "above 0"),
            "load_timeout_s": (self.load_timeout_s > 0, "above 0"),
            "store_lease_s": (self.store_lease_s > self.flush_interval_s, "above flush_interval_s"),
            "cpus_per_worker": (self.cpus_per_worker >= 0, "0 or more"),
            "chunk_windows": (self.chunk_windows >= 1, "at least 1"),
            "timestamp_unit": (self.timestamp_unit in (None, "s", "ms", "us", "ns"), "s, ms, us or ns"),
            "pipeline": (
                isinstance(self.pipeline, str) and self.pipeline,
                "a sigllm pipeline name or JSON path; sigray.run also takes a pipeline dict",
            ),
            "pipeline_params": (isinstance(self.pipeline_params, dict), "a mapping {'block#1': {'param': value}}"),
        }
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid run configuration: {', '.join(bad)}.")
        if not self.store:
            raise ConfigError("a store path is required.")

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def answer_settings(self) -> dict:
        """The run settings that decide answers besides the pipeline (part of a store's identity)."""
        return {
            "model": self.model,
            "engine": self.engine,
            "engine_options": self.answer_engine_options(),
            "max_attempts": self.max_attempts,
            "seed": self.seed,
            "constrained": self.constrained,
        }

    def answer_engine_options(self) -> dict:
        """The engine options that may change answers: all but those the engine declares
        speed-only (``Engine.speed_options``)."""
        from sigray.engines import speed_options

        fast = speed_options(self.engine)
        return {k: v for k, v in sorted(self.engine_options.items()) if k not in fast}


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(identity: dict) -> str:
    """sha256 of the canonical JSON of a run identity."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def identity_differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Human-readable list of the fields that differ between two identities."""
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key, "<absent>"), wanted.get(key, "<absent>")
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(identity_differences(a, b, prefix=path + "."))
        elif canonical_json(a) != canonical_json(b):
            diffs.append(f"{path}: store has {_short(a)}, this run has {_short(b)}")
    return diffs


def _short(value) -> str:
    text = canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."
