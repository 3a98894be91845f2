"""Requests an engine refuses or cuts short (issue: engines, errors classified): a prompt
that fills the context fails its window at once, with its reason and one attempt charged;
an answer cut inside a value sigllm keeps is retried, then failed; the rest of every batch
goes on and the run finishes. The test double's ``context_chars`` stands in for vLLM's
``max_model_len`` (vLLM itself: ``tests/test_vllm_engine.py``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import sigray
from sigray.cli import main
from sigray.config import RunConfig
from sigray.engines.test_double import TestDoubleEngine
from sigray.plan import make_plan
from sigray.store import DONE, FAILED, RunStore

CONTEXT = 660  # characters: refuses the longest prompts of the signal below, leaves some no room for a value
ATTEMPTS = 3


def spiky_signal(path) -> str:
    """300 six-hourly readings with three readings of 1e12: windows holding them have long prompts."""
    rng = np.random.default_rng(0)
    values = 50 + 10 * np.sin(np.arange(300) / 7) + rng.normal(0, 1, 300)
    values[[200, 230, 260]] = 1e12
    pd.DataFrame({"timestamp": 1_600_000_000 + 21600 * np.arange(300), "value": values}).to_csv(path, index=False)
    return str(path)


def test_refused_and_cut_windows_fail_with_their_reasons_and_the_run_finishes(ray_session, tmp_path, capsys):
    signal, store = spiky_signal(tmp_path / "spiky.csv"), str(tmp_path / "run")
    plan = make_plan(RunConfig(store="unused", engine="test-double"), [signal])
    lengths = np.array([len(p) for p in plan.plans[0].prompts])
    budgets = np.array([s.max_tokens for s in plan.samplings(plan.plans[0])])
    result = sigray.run(
        [signal], store, engine="test-double", engine_options={"context_chars": CONTEXT}, max_attempts=ATTEMPTS,
        batch_size=8, flush_interval_s=0.3,
    )  # fmt: skip
    assert result.complete

    opened = RunStore.open(store)
    rows = opened.signal_rows(opened.signal("spiky"))
    status, attempts = (array[rows] for array in opened.read_state())
    reasons = opened.read_reasons()[rows]
    refused = lengths >= CONTEXT
    assert refused.any() and (status[refused] == FAILED).all() and (attempts[refused] == 1).all()
    assert all(r.startswith("refused by the engine: ") and f"context of {CONTEXT}" in r for r in reasons[refused])
    cut = (status == FAILED) & ~refused
    assert cut.any() and (attempts[cut] == ATTEMPTS).all()
    assert all("cut by the token limit" in r for r in reasons[cut])
    room = CONTEXT - lengths
    assert (status[room >= budgets] == DONE).all()  # never cut: every one answered
    assert ((status == DONE) & (room < budgets)).any()  # cut after the value sigllm keeps: valid
    assert result.failed_windows == int(refused.sum() + cut.sum())

    assert main(["status", store, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["failure_reasons"]
    refusal = "refused by the engine: a prompt of N characters leaves no room in the context of N (test double)"
    assert counts.pop(refusal) == refused.sum()
    assert all("cut by the token limit" in r for r in counts) and sum(counts.values()) == cut.sum()


def test_a_run_where_no_window_fits_the_context_is_refused_before_anything_starts(tmp_path, capsys, ray_must_not_start):
    """Every window would be refused: exit 2 naming the shortest prompt and the way forward, no store, no Ray.
    One window that fits is enough for the run to go on (the test above)."""
    signal, store = spiky_signal(tmp_path / "spiky.csv"), tmp_path / "run"
    plan = make_plan(RunConfig(store="unused", engine="test-double"), [signal])
    shortest = min(len(p) for p in plan.plans[0].prompts)
    for context in (shortest, shortest // 2):
        args = ["run", signal, "--store", str(store), "--engine", "test-double"]
        assert main([*args, "--engine-option", f"context_chars={context}"]) == 2
        err = capsys.readouterr().err
        assert f"no window fits the test double's context of {context} characters" in err
        assert f"the shortest prompt has {shortest}" in err and "--engine-option context_chars" in err
        assert not store.exists()
    requests = [(prompt, None) for prompt in plan.plans[0].prompts]
    TestDoubleEngine.check_fits("", {"context_chars": shortest + 1}, requests)  # one window fits: no error
