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

RESTRICTED = AnomalyAnswers(sep=",", parsed=False, interval=False, window_size=200)
LISTED = AnomalyAnswers(sep=",", parsed=True, interval=False, window_size=100, after_marker=True)
INTERVALS = AnomalyAnswers(sep=",", parsed=True, interval=True, window_size=100)


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
        (ForecastAnswers(sep=",", trunc=1, errors="ignore", steps=3), [",1,22,333"]),
        (
            ForecastAnswers(sep=",", trunc=1, errors="coerce", steps=2, continuation=False, spaced=True),
            ["1 2 3 , 4 5", "12,4"],
        ),
    ],
)
def test_what_the_decoding_constraint_allows_the_validator_accepts(answers, examples):
    regex = answers.regex_for(4)
    for text in examples:
        assert re.fullmatch(regex, text), (regex, text)
        assert answers.check(text).ok, (text, answers.check(text).reason)


@pytest.mark.parametrize(
    "answers",
    [RESTRICTED, LISTED, ForecastAnswers(sep=",", trunc=1, errors="ignore", steps=5)],
)
def test_a_windows_answer_limits_follow_from_that_window_alone(answers):
    """One digit wider than the window's widest value; a budget that grows with the window."""
    digits, tokens = answers.limits("1,22,333")
    assert digits == 4 and tokens > 0
    assert answers.limits("1,22,333") == (digits, tokens)  # no state: the same window, the same limits
    wider, more = answers.limits(",".join(["1,22,333,44444"] * 3))
    assert wider == 6 and more >= tokens


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


FIRST_VALUE = ForecastAnswers(sep=",", trunc=1, errors="ignore", steps=5)
ALL_VALUES = ForecastAnswers(sep=",", trunc=None, errors="ignore", steps=3)


@pytest.mark.parametrize(
    ("answers", "text", "valid_when_cut"),
    [
        (FIRST_VALUE, ",775456874154", False),  # the one kept value may have been cut mid-number
        (FIRST_VALUE, ",77545,68", True),  # the kept value ended with a separator
        (FIRST_VALUE, ",7754,", True),
        (ALL_VALUES, ",1,22,333", False),  # the last kept value never provably ended
        (ALL_VALUES, ",1,22,333,", True),
        (RESTRICTED, "12,40", False),
        (RESTRICTED, "12,40,", True),
        (LISTED, "[12, 40]", True),  # sigllm's pattern keeps only a closed list
        (LISTED, "no anomalies", True),
        (INTERVALS, "[[1, 3], [5, 7]]", True),
        (INTERVALS, "[[1, 3], [5, 7]", False),  # the list of intervals never closed
    ],
)
def test_an_answer_cut_by_its_length_limit_is_valid_only_when_what_sigllm_keeps_ended(answers, text, valid_when_cut):
    assert answers.check(text).ok  # valid had it ended on its own
    verdict = answers.check(text, cut=True)
    assert verdict.ok == valid_when_cut
    if not valid_when_cut:
        assert "cut by the token limit" in verdict.reason
