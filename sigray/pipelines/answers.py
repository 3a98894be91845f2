"""What a valid LLM answer looks like, per pipeline family (detector, prompter).

Workers import this module (it is light: sigllm's parser only, no mlblocks), parse
each answer with sigllm's own code and reject the ones post-processing could not use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """One answer, checked: ``values`` when valid, else ``reason`` says why not."""

    values: np.ndarray | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.values is not None


class AnswerFormat(Protocol):
    """What workers need of a pipeline's answers: how to read, check and constrain them."""

    horizon: int  # numbers kept per sample in the store's ``values``

    @property
    def regex(self) -> str: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def identity(self) -> dict: ...

    def response(self, text: str) -> str: ...

    def check(self, text: str) -> Verdict: ...


@dataclass(frozen=True)
class ForecastAnswers:
    """Detector answers: ``sep``-separated integers, the window's continuation.

    Valid when sigllm's ``format_as_integer`` (with the pipeline's own ``sep``, ``trunc``
    and ``errors``) yields exactly ``horizon`` finite values.

    ``continuation``: the prompt is the bare window (sigllm's HF forecaster), so the answer
    goes on with a separator; GPT prompts end in one (or are a chat), so answers start
    with a value. ``spaced``: windows were written digit by digit (``space=True``).
    """

    sep: str
    trunc: int | None
    errors: str
    steps: int
    max_digits: int
    continuation: bool = True
    spaced: bool = False

    @property
    def horizon(self) -> int:
        """Values kept per answer after sigllm's truncation."""
        return self.trunc or self.steps

    @property
    def regex(self) -> str:
        """Exactly ``steps`` values, separated (and, for a continuation, introduced) by ``sep``."""
        sep = _regex_escape(self.sep)
        if self.spaced:
            sep, value = f" ?{sep} ?", f"[0-9]( ?[0-9]){{0,{self.max_digits - 1}}}"
        else:
            value = f"[0-9]{{1,{self.max_digits}}}"
        first = f"{sep}{value}" if self.continuation else value
        return f"{first}({sep}{value}){{{self.steps - 1}}}"

    @property
    def max_tokens(self) -> int:
        """Enough tokens for the regex even with one token per character."""
        per_value = 2 * self.max_digits + len(self.sep) + 2 if self.spaced else self.max_digits + len(self.sep)
        return self.steps * per_value + 2

    @property
    def identity(self) -> dict:
        """What the answers depend on beyond the pipeline spec (the data's widest value), for the run identity."""
        return {"sep": self.sep, "steps": self.steps, "max_digits": self.max_digits}

    def response(self, text: str) -> str:
        """sigllm's forecaster returns the continuation as generated."""
        return text

    def check(self, text: str) -> Verdict:
        from sigllm.primitives.transformation import format_as_integer

        if not text or not text.strip():
            return Verdict(None, "empty answer")
        try:
            parsed = format_as_integer([[text]], sep=self.sep, trunc=self.trunc, errors=self.errors)
            values = np.asarray(parsed[0][0], dtype=float).ravel()
        except (ValueError, TypeError) as exc:
            return Verdict(None, f"unparseable answer: {exc}")
        if values.size != self.horizon:
            return Verdict(None, f"{values.size} values, expected {self.horizon}")
        if not np.all(np.isfinite(values)):
            return Verdict(None, "non-numeric value")
        return Verdict(values)


# sigllm's prompter answers are free text around a ``[...]`` list (``parse_anomaly_response``)
# or, with ``restrict_tokens``, bare digits and separators.
_NO_ANOMALIES = "no anomalies"


@dataclass(frozen=True)
class AnomalyAnswers:
    """Prompter answers: the anomalous values (or, with ``interval``, index ranges) of a window.

    ``parsed``: the pipeline runs sigllm's ``parse_anomaly_response`` on the answers (the
    free-text prompters: ``[v1, v2]`` or "no anomalies"); otherwise answers are bare
    ``sep``-separated digits (``restrict_tokens``), possibly none. Valid when sigllm's own
    parsing accepts the answer, it is one of those forms, and index ranges lie inside the
    window. An answer naming no anomalies is valid; an empty free-text answer is not. ``values`` holds one number per
    sample: how many values (or indices) it named.
    """

    sep: str
    parsed: bool
    interval: bool
    window_size: int
    max_digits: int
    max_new_tokens: int
    after_marker: bool = False
    trunc: int | None = None
    errors: str = "ignore"

    horizon = 1

    @property
    def regex(self) -> str:
        number = f"[0-9]{{1,{self.max_digits}}}"
        if not self.parsed:
            sep = _regex_escape(self.sep)
            return f"({number}({sep}{number})*)?"
        if self.interval:
            pair = rf"\[{number}, ?{number}\]"
            return rf"{_NO_ANOMALIES}|\[{pair}(, ?{pair})*\]"
        return rf"{_NO_ANOMALIES}|\[{number}(, ?{number})*\]"

    @property
    def max_tokens(self) -> int:
        return self.max_new_tokens

    @property
    def identity(self) -> dict:
        """What the answers depend on beyond the pipeline spec (the data's widest value), for the run identity."""
        return {"sep": self.sep, "max_digits": self.max_digits}

    def response(self, text: str) -> str:
        """What sigllm's prompter returns for a generated continuation of the prompt.

        With ``after_marker`` (sigllm's HF prompter without ``restrict_tokens``) sigllm decodes
        prompt and answer together and keeps what follows the prompt's ``[RESPONSE]`` marker,
        stripped: the continuation up to any further marker. Otherwise the continuation as is.
        """
        return text.split("[RESPONSE]")[0].strip() if self.after_marker else text

    def check(self, text: str) -> Verdict:
        from sigllm.primitives.prompting.anomalies import PATTERN, _clean_response, parse_anomaly_response
        from sigllm.primitives.transformation import format_as_integer

        if self.parsed:
            clean = _clean_response(text)
            if not text.strip():
                return Verdict(None, "empty answer (neither a [...] list nor 'no anomalies')")
            if clean and not re.search(PATTERN, clean):
                return Verdict(None, "neither a [...] list nor 'no anomalies'")
            try:
                parsed = parse_anomaly_response([[text]], interval=self.interval)[0][0]
            except (SyntaxError, ValueError, TypeError) as exc:
                return Verdict(None, f"malformed list: {type(exc).__name__}: {exc}")
            if self.interval:
                outside = [i for i in parsed if not 0 <= i < self.window_size]
                if outside:
                    return Verdict(None, f"indices outside the window of {self.window_size}: {outside[:5]}")
                return Verdict(np.array([len(parsed)], dtype=float))
            text = parsed
        elif text and re.search(rf"[^0-9\s{re.escape(self.sep)}]", text):
            return Verdict(None, "not digits and separators")
        try:
            values = format_as_integer([[text]], sep=self.sep, trunc=self.trunc, errors=self.errors)[0][0]
        except (ValueError, TypeError) as exc:
            return Verdict(None, f"unparseable answer: {exc}")
        return Verdict(np.array([np.size(values)], dtype=float))


def _regex_escape(text: str) -> str:
    # Only escape what regex engines treat specially; xgrammar dislikes needless escapes.
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)
