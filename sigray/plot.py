"""One picture per signal: the signal, the forecast, detected anomalies and true labels;
for a multichannel signal, the target channel so and the other channels as a heat strip."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from sigray.errors import InputError, SigrayWarning

_SET_COLOURS = ("tab:red", "tab:purple", "tab:orange", "tab:brown")
_LATEST_DATE_S = 9.2e9  # pandas' datetime64[ns] ends in 2262


def plot_signal(
    signal: pd.DataFrame,
    detections: list[tuple[str, pd.DataFrame | None]],
    out_path: str,
    title: str = "",
    forecast: np.ndarray | None = None,
    forecast_index: np.ndarray | None = None,
    labels: pd.DataFrame | None = None,
) -> str:
    """Write a PNG to ``out_path`` (its folder made if needed).

    ``detections``: (label, anomalies) per result set, each shaded in its own colour and
    band (one set fills the height; two split it, to compare); None for a set without a
    result yet. True labels are outlined green. Timestamps beyond what dates can show are
    drawn as plain numbers. A multichannel ``signal`` (Orion's ``timestamp,0,...,K-1``)
    draws channel 0, the target, as the line and channels 1..K-1 as a strip below it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = os.path.splitext(out_path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise InputError(f"cannot draw {out_path}: name a picture file ending in .{', .'.join(sorted(formats))}.")
    times = np.asarray(signal["timestamp"], dtype="float64")
    as_dates = times.size > 0 and np.abs(times).max() < _LATEST_DATE_S

    def when(seconds):
        seconds = np.asarray(seconds, dtype="float64")
        return pd.to_datetime(seconds, unit="s") if as_dates else seconds

    values = [c for c in signal.columns if c != "timestamp"]
    if len(values) > 1:
        fig, (ax, strip) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
        _draw_channels(strip, signal, values[1:], when)
    else:
        fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(
        when(times),
        signal[values[0]],
        lw=0.6,
        color="0.3",
        label="signal" if len(values) == 1 else "channel 0 (target)",
    )
    if forecast is not None and forecast_index is not None and len(forecast) == len(forecast_index):
        ax.plot(when(forecast_index), forecast, lw=0.8, color="tab:blue", alpha=0.8, label="forecast (LLM)")
    band = 1.0 / max(1, len(detections))
    for k, (name, anomalies) in enumerate(detections):
        if anomalies is None:
            continue
        colour = _SET_COLOURS[k % len(_SET_COLOURS)]
        label = "detected" if len(detections) == 1 else f"detected: {name}"
        for i, row in enumerate(anomalies.itertuples()):
            ax.axvspan(
                when(row.start),
                when(row.end),
                ymin=1 - (k + 1) * band,
                ymax=1 - k * band,
                color=colour,
                alpha=0.25,
                label=label if i == 0 else None,
            )
    if labels is not None:
        for i, row in enumerate(labels.itertuples()):
            ax.axvspan(
                when(row.start), when(row.end), fill=False, ec="tab:green", lw=1.5, label="labelled" if i == 0 else None
            )
    if times.size:
        ax.set_xlim(when(times.min()), when(times.max()))
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    if as_dates:
        fig.autofmt_xdate()
        if len(values) > 1:
            ax.tick_params(labelbottom=False)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        fig.savefig(out_path, dpi=110)
    except OSError as exc:
        raise InputError(f"cannot write picture {out_path}: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)
    return out_path


def plot_from_store(
    store: str,
    out_path: str,
    signal: str | None = None,
    labels: dict[str, list[tuple[int, int]]] | None = None,
    sets: list[str | None] | None = None,
) -> tuple[str, bool]:
    """Draw one signal from its store alone (errors: ``StoreReader.saved_signal``).

    ``labels`` as ``evaluate.load_labels`` returns them; ``sets``: the result sets to draw
    (ids or names; default the most recently used), two to compare. Returns the picture's
    path and whether every set drawn had the signal's result (False: the run has not
    finished it, and the picture says so).
    """
    from sigray.reader import open_store

    reader = open_store(store)
    detections, forecast, finished, title, name, data = [], None, True, "", signal, None
    for wanted in sets or [None]:
        saved = reader.saved_signal(name, wanted)
        name, data = saved.name, saved.signal
        title = saved.title if not title else title.split(" [")[0] + f" [{len(sets)} result sets]"
        chosen = reader.result_set(wanted)
        detections.append((chosen.name if chosen else "none", saved.anomalies))
        finished = finished and saved.anomalies is not None
        if forecast is None and saved.forecast is not None:
            forecast = (saved.forecast, saved.forecast_index)
    known = None
    if labels is not None:
        if name not in labels:
            warnings.warn(
                f"the labels name no signal {name!r} (they name {', '.join(sorted(labels)[:5])}...): none drawn.",
                SigrayWarning,
                stacklevel=2,
            )
        known = pd.DataFrame(labels.get(name, []), columns=["start", "end"])
    path = plot_signal(
        data,
        detections,
        out_path,
        title=title,
        forecast=None if forecast is None else forecast[0],
        forecast_index=None if forecast is None else forecast[1],
        labels=known,
    )
    return path, finished


def _draw_channels(strip, signal: pd.DataFrame, channels: list[str], when) -> None:
    """Channels 1..K-1 over time, one row each, each scaled to its own range."""
    ordered = signal.sort_values("timestamp", kind="stable")
    grid = ordered[channels].to_numpy(dtype="float64").T
    low, high = grid.min(axis=1, keepdims=True), grid.max(axis=1, keepdims=True)
    grid = np.divide(grid - low, high - low, out=np.zeros_like(grid), where=high > low)
    rows = np.arange(1, len(channels) + 1)
    strip.pcolormesh(when(ordered["timestamp"]), rows, grid, shading="nearest", cmap="Greys", rasterized=True)
    strip.set_ylabel("channels", fontsize=8)
    strip.set_yticks([rows[0], rows[-1]])
    strip.invert_yaxis()
