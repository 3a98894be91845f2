"""VllmEngine against a real vLLM engine running the tiny random-weight model (CPU or GPU).

One engine is shared by the whole module: starting one takes ~35 s on CPU.
"""

from __future__ import annotations

import filecmp
import os
import re
from importlib.metadata import entry_points

import pytest

pytest.importorskip("vllm")

from sigray.engines import vllm_plugin  # noqa: E402
from sigray.engines.base import Engine, Sampling  # noqa: E402
from sigray.engines.vllm_engine import VllmEngine  # noqa: E402
from sigray.testing.tiny_model import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm

SERIES_REGEX = r",[0-9]{1,4}(,[0-9]{1,4}){4}"
SERIES_PROMPTS = ["12,15,18,21,24", "100,98,97,95,94,92", "5,5,5,5,5,5,5,5", "7,1,7,1,7,1", "3000,3100,3050,3200"]
FREE = Sampling(n=1, temperature=1.0, max_tokens=12)


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = VllmEngine(tiny_model)
    yield engine
    engine.close()
    engine.close()  # closing twice is allowed


def spaced_seeds(count: int, n: int = 1, base: int = 1000) -> list[int]:
    return [base + i * n for i in range(count)]


def test_tiny_model_build_is_byte_identical_and_idempotent(tiny_model, tmp_path):
    again = build_tiny_model(str(tmp_path / "again"))
    names = sorted(os.listdir(tiny_model))
    assert names == sorted(os.listdir(again))
    _, mismatch, errors = filecmp.cmpfiles(tiny_model, again, names, shallow=False)
    assert mismatch == [] and errors == []
    stamp = os.stat(os.path.join(again, "model.safetensors")).st_mtime_ns
    assert build_tiny_model(again) == again
    assert os.stat(os.path.join(again, "model.safetensors")).st_mtime_ns == stamp
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no staging leftovers


def test_amx_plugin_is_registered_for_vllm():
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("sigray_amx") == "sigray.engines.vllm_plugin:init_amx"
    vllm_plugin.init_amx()  # idempotent, never raises
    vllm_plugin.init_amx()


def test_amx_plugin_is_a_silent_no_op_off_cpu(monkeypatch):
    import torch

    def forbidden():
        raise AssertionError("_init_amx called off CPU")

    monkeypatch.setattr(torch._C._cpu, "_init_amx", forbidden)
    monkeypatch.setattr(vllm_plugin, "_on_cpu", lambda: False)
    vllm_plugin.init_amx()
    monkeypatch.setattr(vllm_plugin, "_on_cpu", lambda: True)
    vllm_plugin.init_amx()  # the failure is swallowed, not raised


def test_engine_meets_the_engine_protocol(engine):
    assert isinstance(engine, Engine)


def test_regex_constrained_answers_match_the_regex_in_full(engine):
    sampling = Sampling(n=3, temperature=1.0, max_tokens=32, regex=SERIES_REGEX)
    texts = engine.generate(SERIES_PROMPTS, sampling, spaced_seeds(len(SERIES_PROMPTS), n=3))
    assert [len(answers) for answers in texts] == [3] * len(SERIES_PROMPTS)
    for answers in texts:
        for text in answers:
            assert re.fullmatch(SERIES_REGEX, text), text


def test_same_seed_gives_same_texts_across_calls(engine):
    seeds = spaced_seeds(len(SERIES_PROMPTS))
    assert engine.generate(SERIES_PROMPTS, FREE, seeds) == engine.generate(SERIES_PROMPTS, FREE, seeds)


def test_same_seed_gives_same_texts_in_another_batch_composition(engine):
    sampling = Sampling(n=2, temperature=1.0, max_tokens=16, regex=SERIES_REGEX)
    seeds = spaced_seeds(len(SERIES_PROMPTS), n=2)
    whole = engine.generate(SERIES_PROMPTS, sampling, seeds)
    # Reversed, interleaved with unrelated prompts, and alone: same texts for each (prompt, seed).
    others = ["1,2,3", "hello world", "900,800,700,600"]
    mixed_prompts = [p for pair in zip(SERIES_PROMPTS[::-1], others * 2) for p in pair]
    mixed_seeds = [s for pair in zip(seeds[::-1], [7, 8, 9] * 2) for s in pair]
    mixed = engine.generate(mixed_prompts, sampling, mixed_seeds)
    assert mixed[0::2] == whole[::-1]
    assert engine.generate(SERIES_PROMPTS[2:3], sampling, seeds[2:3]) == whole[2:3]


def test_different_seeds_give_different_texts(engine):
    prompts = [SERIES_PROMPTS[0]] * 4
    texts = engine.generate(prompts, FREE, [1, 2, 3, 4])
    assert len({answers[0] for answers in texts}) == 4


def test_n_samples_returns_n_texts_per_prompt(engine):
    texts = engine.generate(SERIES_PROMPTS[:2], Sampling(n=4, temperature=1.0, max_tokens=8), spaced_seeds(2, n=4))
    assert [len(answers) for answers in texts] == [4, 4]
    assert all(len(set(answers)) > 1 for answers in texts)  # samples k use seed + k, not one seed


def test_temperature_zero_is_greedy_and_repeats_the_answer_n_times(engine):
    greedy = Sampling(n=3, temperature=0.0, max_tokens=8)
    first = engine.generate(SERIES_PROMPTS[:2], greedy, [1, 2])
    assert first == engine.generate(SERIES_PROMPTS[:2], greedy, [99, 100])  # seeds do not matter
    assert all(len(answers) == 3 and len(set(answers)) == 1 for answers in first)


def test_very_short_prompt_does_not_crash_the_engine(engine):
    short = ["a", "1", ","]
    texts = engine.generate(short, Sampling(n=2, max_tokens=8), spaced_seeds(3, n=2))
    assert [len(answers) for answers in texts] == [2, 2, 2]
    assert len(engine.generate(SERIES_PROMPTS[:1], FREE, [5])) == 1  # the engine is still alive


def test_batch_larger_than_one_step_token_budget_keeps_the_engine_alive(engine):
    # ~22k prompt tokens: with chunked prefill, vLLM would split a seeded prefill across
    # steps and the CPU worker would die rewinding its generator.
    long_prompt = ",".join(str(100 + k % 900) for k in range(150))
    prompts = [f"{k},{long_prompt}" for k in range(48)]
    texts = engine.generate(prompts, Sampling(n=1, max_tokens=4), spaced_seeds(48))
    assert len(texts) == 48 and all(len(answers) == 1 for answers in texts)


def test_empty_batch_returns_empty_list(engine):
    assert engine.generate([], FREE, []) == []


def test_mismatched_seeds_are_rejected(engine):
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate(SERIES_PROMPTS[:2], FREE, [1])
