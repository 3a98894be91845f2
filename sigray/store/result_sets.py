"""Result sets: one per detection setting, beside each other in a generation.

The answers of a store are fixed by its generation; what sigllm does after its LLM step
(aggregating samples, errors, thresholds, voting) is the *detection setting*. Each one
gets its own group, named by its fingerprint, so tuning a threshold adds a set and
never touches another::

    results/<set>/zarr.json        attributes "sigray": name, detection (the whole resolved
                                   pipeline, what the set depends on), fingerprint, created,
                                   used (last run or detect that wrote or resumed it)
    results/<set>/<group>/         one signal (its registry group): start, end, severity,
                                   failed_windows, forecast, forecast_index; attributes
                                   signal, digest, written: written last, so a signal whose
                                   attributes are missing was cut short and is written again

A signal's result is saved once all its windows are settled; for the same set and the
same signal data it never changes, so a rerun skips it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sigray.errors import StoreError
from sigray.store.layout import SignalEntry

_ATTRS = "sigray"

# Named dimensions make a result readable with xarray.
_DIMENSIONS = {
    "start": "anomaly",
    "end": "anomaly",
    "severity": "anomaly",
    "failed_windows": "failed_window",
    "forecast": "forecast",
    "forecast_index": "forecast",
}


@dataclass(frozen=True)
class ResultSetInfo:
    """One result set: ``id`` (its folder), ``name`` (its settings in a few words)."""

    id: str
    name: str
    fingerprint: str
    detection: dict
    created: float
    used: float


def set_id(fingerprint: str) -> str:
    return fingerprint[:12]


def list_sets(group) -> list[ResultSetInfo]:
    """Every result set of a generation, the most recently used last."""
    try:
        results = group["results"]
    except KeyError:
        return []
    sets = []
    for name, child in results.groups():
        meta = child.attrs.get(_ATTRS)
        if not meta:
            continue  # cut short while being created; made again by the next run
        sets.append(
            ResultSetInfo(
                id=name,
                name=meta.get("name", name),
                fingerprint=meta["fingerprint"],
                detection=meta.get("detection", {}),
                created=float(meta.get("created", 0.0)),
                used=float(meta.get("used", meta.get("created", 0.0))),
            )
        )
    return sorted(sets, key=lambda s: (s.used, s.created))


def find_set(group, wanted: str | None) -> ResultSetInfo | None:
    """The set named ``wanted`` (its id, a prefix of it, or its name), or the most recently
    used one when ``wanted`` is None. StoreError naming the sets when none matches."""
    sets = list_sets(group)
    if wanted is None:
        return sets[-1] if sets else None
    matches = [s for s in sets if s.id.startswith(wanted) or s.name == wanted]
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{s.id} ({s.name})" for s in sets) or "none yet"
    problem = "is ambiguous" if matches else "matches no result set"
    raise StoreError(f"--set {wanted!r} {problem}; the store's result sets: {known}.")


def ensure_set(group, fingerprint: str, name: str, detection: dict) -> ResultSetInfo:
    """The set for this detection setting, created (metadata last) when it is new; marked used now."""
    sid = set_id(fingerprint)
    child = group.require_group(f"results/{sid}")
    now = time.time()
    meta = dict(child.attrs.get(_ATTRS) or {})
    if not meta:
        meta = {"name": name, "fingerprint": fingerprint, "detection": detection, "created": now}
    meta["used"] = now
    child.attrs[_ATTRS] = meta
    return ResultSetInfo(sid, meta["name"], fingerprint, detection, meta["created"], now)


def has_result(group, sid: str, entry: SignalEntry) -> bool:
    """Whether ``entry``'s result (for its current data) is saved whole in set ``sid``."""
    try:
        meta = group[f"results/{sid}/{entry.group}"].attrs.get(_ATTRS)
    except KeyError:
        return False
    return bool(meta) and meta.get("digest") == entry.digest


def write_result(group, sid: str, entry: SignalEntry, arrays: dict[str, np.ndarray]) -> None:
    """Save one signal's result in set ``sid``: the arrays, then the attributes that make it whole.
    (The set itself is listed once ``ensure_set`` wrote its metadata.)"""
    child = group.require_group(f"results/{sid}/{entry.group}")
    if _ATTRS in child.attrs:
        child.attrs[_ATTRS] = {}  # being rewritten: not whole until the end
    for name, data in arrays.items():
        data = np.asarray(data)
        child.create_array(
            name, shape=data.shape, dtype=data.dtype, overwrite=True, dimension_names=(_DIMENSIONS[name],)
        )[...] = data
    child.attrs[_ATTRS] = {"signal": entry.name, "digest": entry.digest, "written": time.time()}


def read_result(group, sid: str, entry: SignalEntry) -> dict[str, np.ndarray] | None:
    """The saved arrays of ``entry`` in set ``sid``; None when not saved whole for its current data."""
    if not has_result(group, sid, entry):
        return None
    child = group[f"results/{sid}/{entry.group}"]
    return {name: np.asarray(array[...]) for name, array in child.arrays()}
