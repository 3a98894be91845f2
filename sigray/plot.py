"""One picture per signal: the signal, the forecast, detected anomalies and true labels."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from sigray.errors import InputError


def plot_signal(
    signal: pd.DataFrame,
    anomalies: pd.DataFrame,
    out_path: str,
    title: str = "",
    forecast: np.ndarray | None = None,
    forecast_index: np.ndarray | None = None,
    labels: pd.DataFrame | None = None,
) -> str:
    """Write a PNG to ``out_path`` (its folder made if needed): detections shaded red, true labels
    outlined green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def when(seconds):
        return pd.to_datetime(np.asarray(seconds), unit="s")

    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(when(signal["timestamp"]), signal["value"], lw=0.6, color="0.3", label="signal")
    if forecast is not None and forecast_index is not None and len(forecast) == len(forecast_index):
        ax.plot(when(forecast_index), forecast, lw=0.8, color="tab:blue", alpha=0.8, label="forecast (LLM)")
    for i, row in enumerate(anomalies.itertuples()):
        ax.axvspan(when(row.start), when(row.end), color="tab:red", alpha=0.25, label="detected" if i == 0 else None)
    if labels is not None:
        for i, row in enumerate(labels.itertuples()):
            ax.axvspan(
                when(row.start), when(row.end), fill=False, ec="tab:green", lw=1.5, label="labelled" if i == 0 else None
            )
    ax.set_xlim(when(signal["timestamp"].iloc[0]), when(signal["timestamp"].iloc[-1]))
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
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
    store: str, out_path: str, signal: str | None = None, labels: dict[str, list[tuple[int, int]]] | None = None
) -> str:
    """Draw one signal of a finished run from its store alone (see ``report.saved_signal``
    for the errors); ``labels`` as ``evaluate.load_labels`` returns them."""
    from sigray.report import saved_signal

    saved = saved_signal(store, signal)
    known = None
    if labels is not None:
        known = pd.DataFrame(labels.get(saved.name, []), columns=["start", "end"])
    return plot_signal(
        saved.signal,
        saved.anomalies,
        out_path,
        title=saved.title,
        forecast=saved.forecast,
        forecast_index=saved.forecast_index,
        labels=known,
    )
