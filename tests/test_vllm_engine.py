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
from sigray.engines.base import Sampling  # noqa: E402
from sigray.engines.vllm_engine import VllmEngine  # noqa: E402
from sigray.testing.tiny_model import build_tiny_model  # noqa: E402
from tests.engine_contract import FREE, SERIES_PROMPTS, EngineContract, each, spaced_seeds, texts_of  # noqa: E402

pytestmark = pytest.mark.vllm

SERIES_REGEX = r",[0-9]{1,4}(,[0-9]{1,4}){4}"


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = VllmEngine(tiny_model)
    yield engine
    engine.close()
    engine.close()  # closing twice is allowed


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


class TestVllmEngine(EngineContract):
    """The engine contract, on vLLM."""


def test_prompt_tokens_are_the_models_own_count(engine, tiny_model):
    from transformers import AutoTokenizer

    (completion,) = engine.generate(SERIES_PROMPTS[:1], [FREE], [1])
    assert completion.prompt_tokens == len(AutoTokenizer.from_pretrained(tiny_model)(SERIES_PROMPTS[0])["input_ids"])


def test_regex_constrained_answers_match_the_regex_in_full(engine):
    sampling = Sampling(n=3, temperature=1.0, max_tokens=32, regex=SERIES_REGEX)
    texts = texts_of(
        engine.generate(SERIES_PROMPTS, each(sampling, SERIES_PROMPTS), spaced_seeds(len(SERIES_PROMPTS), n=3))
    )
    assert [len(answers) for answers in texts] == [3] * len(SERIES_PROMPTS)
    for answers in texts:
        for text in answers:
            assert re.fullmatch(SERIES_REGEX, text), text


def test_each_prompt_keeps_its_own_constraint_in_one_batch(engine):
    narrow = Sampling(n=1, max_tokens=32, regex=r",[0-9](,[0-9]){4}")
    wide = Sampling(n=1, max_tokens=32, regex=SERIES_REGEX)
    texts = texts_of(engine.generate(SERIES_PROMPTS[:2], [narrow, wide], [1, 2]))
    assert re.fullmatch(narrow.regex, texts[0][0]) and re.fullmatch(wide.regex, texts[1][0])


def test_n_samples_differ_from_each_other(engine):
    sampling = Sampling(n=4, temperature=1.0, max_tokens=8)
    texts = texts_of(engine.generate(SERIES_PROMPTS[:2], [sampling, sampling], spaced_seeds(2, n=4)))
    assert all(len(set(answers)) > 1 for answers in texts)  # samples k use seed + k, not one seed


def test_temperature_zero_is_greedy_and_repeats_the_answer_n_times(engine):
    greedy = Sampling(n=3, temperature=0.0, max_tokens=8)
    first = engine.generate(SERIES_PROMPTS[:2], [greedy, greedy], [1, 2])
    assert first == engine.generate(SERIES_PROMPTS[:2], [greedy, greedy], [99, 100])  # seeds do not matter
    assert all(len(answers) == 3 and len(set(answers)) == 1 for answers in texts_of(first))


def test_very_short_prompt_does_not_crash_the_engine(engine):
    short = ["a", "1", ","]
    texts = texts_of(engine.generate(short, each(Sampling(n=2, max_tokens=8), short), spaced_seeds(3, n=2)))
    assert [len(answers) for answers in texts] == [2, 2, 2]
    assert len(engine.generate(SERIES_PROMPTS[:1], [FREE], [5])) == 1  # the engine is still alive


def test_batch_larger_than_one_step_token_budget_keeps_the_engine_alive(engine):
    # ~22k prompt tokens: with chunked prefill, vLLM would split a seeded prefill across
    # steps and the CPU worker would die rewinding its generator.
    long_prompt = ",".join(str(100 + k % 900) for k in range(150))
    prompts = [f"{k},{long_prompt}" for k in range(48)]
    texts = texts_of(engine.generate(prompts, each(Sampling(n=1, max_tokens=4), prompts), spaced_seeds(48)))
    assert len(texts) == 48 and all(len(answers) == 1 for answers in texts)


def test_finish_reasons_tell_an_answer_that_ended_from_one_cut_by_its_limit(engine):
    ended = Sampling(n=2, max_tokens=16, regex=r",[0-9]")
    cut = Sampling(n=2, max_tokens=3, regex=r",[0-9]{12}")  # cannot end within 3 tokens
    completions = engine.generate(SERIES_PROMPTS[:2], [ended, cut], spaced_seeds(2, n=2))
    assert completions[0].finish_reasons == ["stop", "stop"]
    assert completions[1].finish_reasons == ["length", "length"]


def test_a_prompt_without_room_for_its_answer_is_refused_unsent_and_the_batch_goes_on(engine):
    context = engine._llm.llm_engine.model_config.max_model_len
    too_long = ",".join(str(100 + k % 900) for k in range(context))  # more tokens than the context
    greedy = Sampling(n=1, temperature=0.0, max_tokens=8)
    no_room = Sampling(n=1, temperature=0.0, max_tokens=context - 4)  # a short prompt, a budget the size of the context
    prompts = [SERIES_PROMPTS[0], too_long, SERIES_PROMPTS[1], SERIES_PROMPTS[2]]
    completions = engine.generate(prompts, [greedy, greedy, greedy, no_room], [1, 2, 3, 4])
    for refused in (completions[1], completions[3]):
        assert refused.permanent and refused.texts == [] and f"{context}-token context" in refused.refused
    alone = engine.generate([SERIES_PROMPTS[0], SERIES_PROMPTS[1]], [greedy, greedy], [1, 3])
    assert [completions[0], completions[2]] == alone  # answered as if the refused ones were never there


def test_a_request_vllm_itself_rejects_is_refused_alone_and_the_batch_goes_on(engine, monkeypatch):
    """Without sigray's own check, vLLM raises for the whole batch; the engine finds the culprit."""
    monkeypatch.setattr(engine, "_too_long", lambda prompt, sampling: None)
    context = engine._llm.llm_engine.model_config.max_model_len
    too_long = ",".join(str(100 + k % 900) for k in range(context))
    greedy = Sampling(n=1, temperature=0.0, max_tokens=8)
    completions = engine.generate([SERIES_PROMPTS[0], too_long, SERIES_PROMPTS[1]], [greedy] * 3, [1, 2, 3])
    assert completions[1].permanent and completions[1].refused.startswith("vLLM rejected the request")
    assert [completions[0], completions[2]] == engine.generate(
        [SERIES_PROMPTS[0], SERIES_PROMPTS[1]], [greedy] * 2, [1, 3]
    )


class _LlmStandIn:
    """A test double of ``vllm.LLM`` for the token count alone: a tokenizer and a context length."""

    def __init__(self, tokenizer, max_model_len: int):
        from types import SimpleNamespace

        self.tokenizer = tokenizer
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len))

    def get_tokenizer(self):
        return self.tokenizer


def test_a_chat_prompt_is_counted_through_the_models_chat_template(tiny_model):
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    engine = VllmEngine.__new__(VllmEngine)
    engine._llm = _LlmStandIn(tokenizer, max_model_len=600)
    messages = [{"role": "system", "content": "find anomalies"}, {"role": "user", "content": "1,2," * 120}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = len(tokenizer.encode(rendered, add_special_tokens=False))
    chat = Sampling(n=1, max_tokens=600 - n, chat=True)
    assert engine._too_long(json.dumps(messages), chat) is None  # exactly fits
    refused = engine._too_long(json.dumps(messages), Sampling(n=1, max_tokens=601 - n, chat=True))
    assert refused.permanent and f"a prompt of {n} tokens" in refused.refused
    tokenizer.chat_template = None  # no template: not counted here; vLLM decides
    assert engine._too_long(json.dumps(messages), Sampling(n=1, max_tokens=601 - n, chat=True)) is None


@pytest.mark.parametrize("trunc", [1, 3])
def test_multivariate_json_answers_under_their_regex_are_what_sigllm_reads(engine, trunc):
    """The JSON-format detector's constraint (issue 18) compiles in vLLM's grammar backend and
    holds; with sigllm's ``trunc`` of 1 every answer is one ``d0`` pair, which its reader keeps."""
    from sigray.pipelines.answers import JsonForecastAnswers

    answers = JsonForecastAnswers(trunc=trunc)
    window = "d0:314,d1:100,d2:200,d0:315,d1:100,d2:100,d0:317,d1:200,d2:100"
    max_digits, max_tokens = answers.limits(window)
    sampling = Sampling(n=2, temperature=1.0, max_tokens=max_tokens * 4, regex=answers.regex_for(max_digits))
    completions = engine.generate([window] * 4, [sampling] * 4, spaced_seeds(4, n=2))
    for completion in completions:
        for text, reason in zip(completion.texts, completion.finish_reasons):
            assert re.fullmatch(sampling.regex, text) or reason == "length", text
            verdict = answers.check(text, cut=reason == "length")
            if trunc == 1:
                assert re.fullmatch(r",d0:[0-9]{1,4}", text) and verdict.ok, text
            elif verdict.ok:
                assert len(verdict.values) == trunc
