"""Chaos: 12 seeded real faults during one run; the result is bit-identical to a quiet run."""

from __future__ import annotations

import collections
import os

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from sigray.testing.chaos import run_chaos
from tests.conftest import nab_signal

pytestmark = pytest.mark.extended
NAMES = ["ambient_temperature_system_failure", "nyc_taxi"]  # 1,175 + 720 windows
WORKERS, BATCH, DELAY_S, FLUSH_S = 2, 4, 0.2, 1.0
RESULT_SETTINGS = {"engine": "test-double", "engine_options": {"garbage_rate": 0.05}, "max_attempts": 4}


def test_twelve_faults_change_nothing_in_the_result(ray_session, tmp_path, short_tmp):
    signals = [nab_signal(n) for n in NAMES]
    store, log = str(tmp_path / "run"), str(tmp_path / "generated.log")
    command = ["run", *signals, "--store", store, "--engine", "test-double", "--max-attempts", "4"]
    command += ["--workers", str(WORKERS), "--batch-size", str(BATCH), "--flush-interval", str(FLUSH_S)]
    command += ["--lease-timeout", "3", "--load-timeout", "15", "--num-cpus", "4", "--quiet"]
    for option in ("garbage_rate=0.05", f"delay_s={DELAY_S}", f"log_path={log}"):
        command += ["--engine-option", option]

    report = run_chaos(command, store, os.path.join(short_tmp, "chaos"), n_faults=12, seed=7)
    assert len(report.faults) == 12, report.faults
    assert report.exit_codes[-1] == 0, report.output[-4000:]
    kinds = collections.Counter(kind for _, kind in report.faults)
    assert len(kinds) == 5, kinds  # every kind of fault, at least once

    reference = str(tmp_path / "reference")
    quiet = sigray.run(signals, reference, **RESULT_SETTINGS, batch_size=BATCH)
    status, attempts = RunStore.open(store).read_state()
    ref_status, ref_attempts = RunStore.open(reference).read_state()
    assert (status == ref_status).all() and (status == DONE).all(), "every window done, exactly as a quiet run"
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    for name in NAMES:
        pd.testing.assert_frame_equal(
            sigray.open(store).results().anomalies[name],
            quiet.anomalies[name].reset_index(drop=True),
            check_dtype=False,
        )

    # Generations per window: the retries a quiet run needs, plus redone work bounded per fault.
    window_of = {_digest(p): w for w, p in enumerate(RunStore.open(store).read_prompts())}
    with open(log) as f:
        counts = collections.Counter(window_of[line.split()[0]] for line in f)
    generated = np.array([counts[w] for w in range(len(status))])
    assert (generated >= ref_attempts).all()
    assert (attempts <= ref_attempts).all() and (attempts >= ref_attempts - 1).all()
    rate = WORKERS * BATCH / DELAY_S
    per_fault = rate * FLUSH_S + 2 * WORKERS * BATCH + BATCH  # unflushed + in flight + prefetched
    assert (generated - ref_attempts).sum() <= len(report.faults) * per_fault
