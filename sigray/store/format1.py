"""Stores of format 1 (sigray before result sets): read as they are, migrated by a run.

Format 1 kept one run at the store's root: ``prompts``, ``status``, ``attempts``,
``answers``, ``values`` along one window axis (each signal a range of it, named in the
root attributes' ``layout``) and ``results/<i>`` per signal. ``status``, ``results`` and
``plot`` read it through ``Format1Store``; the first run that writes to it migrates it
(``sigray.prepare``): answers are matched to the new window table by prompt, and the
root's metadata is replaced last, so a crash leaves format 1 or format 2, never neither.
"""

from __future__ import annotations

import json

import numpy as np

from sigray.errors import StoreError
from sigray.storage import Storage, open_storage
from sigray.store.run_store import read_array, zarr_module


class Format1Store:
    """A format-1 store, read-only."""

    format_version = 1

    def __init__(self, storage: Storage, group, meta: dict):
        self.storage = storage
        self.group = group
        self.meta = meta
        self.ranges = [(s["name"], int(s["offset"]), int(s["n_windows"])) for s in meta["layout"]["signals"]]

    @classmethod
    def open(cls, path: str | Storage) -> Format1Store:
        storage = open_storage(path)
        zarr = zarr_module()
        try:
            group = zarr.open_group(storage.zarr_store(read_only=True), mode="r")
            meta = dict(group.attrs["sigray"])
            if meta.get("format_version") != 1:
                raise ValueError(f"format {meta.get('format_version')}")
        except (KeyError, FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            raise StoreError(f"{storage.url} is not a format-1 sigray store ({exc}).") from None
        return cls(storage, group, meta)

    @property
    def path(self) -> str:
        return self.storage.url

    @property
    def identity(self) -> dict:
        return self.meta["identity"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def read(self, name: str, where: slice = slice(None)) -> np.ndarray:
        return read_array(self.group, name, where, self.path)

    def read_result(self, index: int) -> dict[str, np.ndarray] | None:
        try:
            group = self.group[f"results/{index}"]
        except KeyError:
            return None
        return {name: np.asarray(array[...]) for name, array in group.arrays()}

    def read_progress(self) -> list[dict]:
        from sigray.store.run_store import PROGRESS_FILE, parse_progress

        return parse_progress(self.storage.read(PROGRESS_FILE))

    def answers_by_prompt(self) -> dict[str, tuple[int, int, np.ndarray, np.ndarray]]:
        """Settled windows as prompt -> (status, attempts, answers [samples], values [samples, steps])."""
        status, attempts = self.read("status"), self.read("attempts")
        settled = np.flatnonzero(status != 0)
        if not settled.size:
            return {}
        prompts, answers, values = self.read("prompts"), self.read("answers"), self.read("values")
        return {str(prompts[w]): (int(status[w]), int(attempts[w]), answers[w], values[w]) for w in settled.tolist()}


def legacy_identity(config, pipeline_spec: dict, signal_digests: dict, answers_identity: dict, normal) -> dict:
    """The identity format 1 gave this run (what its fingerprint covers), to recognise the same run."""
    identity = {
        "store_format_version": 1,
        "pipeline": config.pipeline,
        "pipeline_spec": pipeline_spec,
        **config.answer_settings(),
        "signals": dict(sorted(signal_digests.items())),
        "answers": answers_identity,
    }
    if normal is not None:
        identity["normal"] = normal
    return identity


def legacy_max_digits(windows_per_signal: list[list[str]], sep: str) -> int:
    """Format 1's run-wide widest value: over the first 1,000 windows of every signal, plus one."""
    sample = [w for windows in windows_per_signal for w in windows[:1000]]
    return max((len(v) for w in sample for v in "".join(w.split()).split(sep)), default=4) + 1
