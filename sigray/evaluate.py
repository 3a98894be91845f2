"""Score detected anomalies against known ones with Orion's own contextual metrics.

Labels come in Orion's formats: ``signal,events`` (events a JSON list of ``[start, end]``)
or ``signal,start,end`` (one row per event), times in epoch seconds as in ``orion.data``,
or dates (as signals may have them; read as UTC, like a signal's). Scores follow Orion's
benchmark: per signal, the contextual confusion matrix, *overlap* (an event counts when
any part of it is found) and *weighted* (counted by duration); overall scores come from the
summed confusion matrices.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from sigray.errors import InputError

METHODS = {"overlap": False, "weighted": True}  # name -> Orion's ``weighted`` flag


def load_labels(path: str) -> dict[str, list[tuple[int, int]]]:
    """Known anomalies per signal from an Orion labels CSV."""
    if not os.path.isfile(path):
        raise InputError(f"labels file {path} does not exist.")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"labels file {path} is not a readable CSV: {exc}") from None
    frame = frame.rename(columns=lambda c: str(c).strip())
    columns = set(frame.columns)
    labels: dict[str, list[tuple[int, int]]] = {}
    if {"signal", "events"} <= columns:
        for row in frame.itertuples(index=False):
            try:
                events = json.loads(str(row.events))
                labels[str(row.signal)] = [(_seconds(s), _seconds(e)) for s, e in events]
            except (ValueError, TypeError) as exc:
                problem = f"events of {row.signal!r} are not [[start, end], ...] of seconds or dates: {exc}"
                raise InputError(f"labels file {path}: {problem}") from None
    elif {"signal", "start", "end"} <= columns:
        for row in frame.itertuples(index=False):
            try:
                labels.setdefault(str(row.signal), []).append((_seconds(row.start), _seconds(row.end)))
            except (ValueError, TypeError):
                raise InputError(
                    f"labels file {path}: start/end of {row.signal!r} are neither seconds nor dates."
                ) from None
    else:
        raise InputError(
            f"labels file {path} has columns {sorted(columns)}; expected Orion's signal,events or signal,start,end."
        )
    return labels


def _seconds(value) -> int:
    """Epoch seconds from a number or a date (naive dates are UTC, as in a signal)."""
    if isinstance(value, (int, float)) or str(value).lstrip("-").replace(".", "", 1).isdigit():
        return int(float(value))
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.timestamp())


def confusion(expected: list[tuple[int, int]], detected: pd.DataFrame, weighted: bool) -> tuple[float, float, float]:
    """(tp, fp, fn) of one signal by Orion's contextual confusion matrix; ``detected`` has
    start and end in epoch seconds (a result's anomalies)."""
    from orion.evaluation.contextual import contextual_confusion_matrix

    observed = [(int(s), int(e)) for s, e in zip(detected["start"], detected["end"])]
    if not expected and not observed:
        return 0.0, 0.0, 0.0
    _, fp, fn, tp = contextual_confusion_matrix(expected, observed, weighted=weighted)
    return tp, fp, fn


def scores(tp: float, fp: float, fn: float) -> dict:
    """Precision, recall and F1 from a confusion matrix (0 where undefined, as Orion)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate(detected: dict[str, pd.DataFrame], labels: dict[str, list[tuple[int, int]]]) -> pd.DataFrame:
    """One row per (signal, method) plus an ``ALL`` row per method.

    Signals without labels are left out (and named in ``InputError`` when none match).
    """
    scored = [name for name in detected if name in labels]
    if not scored:
        raise InputError(
            f"no signal of the run ({', '.join(sorted(detected)) or 'none finished'}) has labels "
            f"(labels name: {', '.join(sorted(labels)[:10])}...)."
        )
    rows = []
    for method, weighted in METHODS.items():
        totals = [0.0, 0.0, 0.0]
        for name in scored:
            tp, fp, fn = confusion(labels[name], detected[name], weighted)
            totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
            rows.append({"signal": name, "method": method, **scores(tp, fp, fn)})
        rows.append({"signal": "ALL", "method": method, **scores(*totals)})
    return pd.DataFrame(rows)
