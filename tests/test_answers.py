"""Each pipeline family's validator and decoding constraint, on sigllm's own parsers.

What the constraint lets through must pass the validator (a constrained answer is never
retried for its form), and what sigllm cannot parse must fail it (a retry, not a crash).
"""

from __future__ import annotations

import re

import pytest

from sigray.errors import ConfigError
from sigray.pipelines.answers import AnomalyAnswers, ForecastAnswers
from sigray.pipelines.sigllm_pipeline import SigllmPipeline
from sigray.signals import load_signal

RESTRICTED = AnomalyAnswers(sep=",", parsed=False, interval=False, window_size=200, max_digits=4, max_new_tokens=64)
LISTED = AnomalyAnswers(
    sep=",", parsed=True, interval=False, window_size=100, max_digits=4, max_new_tokens=64, after_marker=True
)
INTERVALS = AnomalyAnswers(sep=",", parsed=True, interval=True, window_size=100, max_digits=4, max_new_tokens=64)


@pytest.mark.parametrize(
    ("answers", "text", "named"),
    [
        (RESTRICTED, "12,40", 2),
        (RESTRICTED, "", 0),  # the model stopped at once: no anomalies
        (LISTED, "[12, 40, 7]", 3),
        (LISTED, "Answer: [12,,40].", 2),
        (LISTED, "No anomalies were found.", 0),
        (LISTED, "[7 1]", 1),  # sigllm reads a list's spaces away: one value, 71
        (INTERVALS, "[[2, 4], [7, 8]]", 5),
        (INTERVALS, "no anomalies", 0),
    ],
)
def test_prompter_answers_sigllm_can_use_are_valid(answers, text, named):
    verdict = answers.check(text)
    assert verdict.ok, verdict.reason
    assert verdict.values.tolist() == [named]


@pytest.mark.parametrize(
    ("answers", "text", "reason"),
    [
        (RESTRICTED, "12, 40 apples", "not digits and separators"),
        (LISTED, "The anomalies are 12 and 40.", "neither a [...] list nor 'no anomalies'"),
        (LISTED, "", "neither"),
        # sigllm's ast.literal_eval raises SyntaxError on this interval list: a retry here.
        (INTERVALS, "[7 1]", "malformed list: SyntaxError"),
        (INTERVALS, "[[2, 400]]", "indices outside the window of 100"),
    ],
)
def test_prompter_answers_sigllm_cannot_use_are_retried_with_a_reason(answers, text, reason):
    verdict = answers.check(text)
    assert not verdict.ok
    assert reason in verdict.reason


def test_free_text_prompter_answers_are_what_follows_the_response_marker():
    assert LISTED.response("  [3, 4]\n[RESPONSE] [9]") == "[3, 4]"
    assert RESTRICTED.response(" 3,4") == " 3,4"  # restricted: the continuation as generated


@pytest.mark.parametrize(
    ("answers", "examples"),
    [
        (RESTRICTED, ["", "1", "12,4000,7"]),
        (LISTED, ["no anomalies", "[1]", "[12, 40,7]"]),
        (INTERVALS, ["no anomalies", "[[1, 2]]", "[[1,2], [30, 41]]"]),
        (ForecastAnswers(sep=",", trunc=1, errors="ignore", steps=3, max_digits=4), [",1,22,333"]),
        (
            ForecastAnswers(sep=",", trunc=1, errors="coerce", steps=2, max_digits=3, continuation=False, spaced=True),
            ["1 2 3 , 4 5", "12,4"],
        ),
    ],
)
def test_what_the_decoding_constraint_allows_the_validator_accepts(answers, examples):
    for text in examples:
        assert re.fullmatch(answers.regex, text), (answers.regex, text)
        assert answers.check(text).ok, (text, answers.check(text).reason)


def test_a_pipeline_that_would_format_interval_lists_as_integers_is_refused():
    params = {"sigllm.primitives.prompting.anomalies.parse_anomaly_response#1": {"interval": True}}
    with pytest.raises(ConfigError, match="interval answers"):
        SigllmPipeline("mistral_prompter_0shot", params)


def test_the_one_shot_prompter_needs_its_normal_reference(cpu_signal):
    from sigray.errors import InputError

    pipeline = SigllmPipeline("mistral_prompter_1shot")
    with pytest.raises(InputError, match="normal reference"):
        pipeline.plan(load_signal(cpu_signal))
    plan = pipeline.plan(load_signal(cpu_signal), normal=load_signal(cpu_signal))
    assert "[NORMAL]" in plan.prompts[0] and plan.prompts[0].endswith(plan.windows[0] + " [RESPONSE]")
