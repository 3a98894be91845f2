"""What a valid LLM answer looks like, per pipeline family.

Workers import this module (it is light: sigllm's parser only, no mlblocks), parse
each answer with sigllm's own code and reject the ones post-processing could not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """One answer, checked: ``values`` when valid, else ``reason`` says why not."""

    values: np.ndarray | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.values is not None


@dataclass(frozen=True)
class ForecastAnswers:
    """Detector answers: ``sep``-separated integers, the window's continuation.

    Valid when sigllm's ``format_as_integer`` (with the pipeline's own ``sep``, ``trunc``
    and ``errors``) yields exactly ``horizon`` finite values.
    """

    sep: str
    trunc: int | None
    errors: str
    steps: int
    max_digits: int

    @property
    def horizon(self) -> int:
        """Values kept per answer after sigllm's truncation."""
        return self.trunc or self.steps

    @property
    def regex(self) -> str:
        """Exactly ``steps`` values, each introduced by the separator (the prompt ends in a value)."""
        sep = _regex_escape(self.sep)
        value = f"[0-9]{{1,{self.max_digits}}}"
        return f"{sep}{value}({sep}{value}){{{self.steps - 1}}}"

    @property
    def max_tokens(self) -> int:
        """Enough tokens for the regex even with one token per character."""
        return self.steps * (self.max_digits + len(self.sep)) + 2

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


def _regex_escape(text: str) -> str:
    # Only escape what regex engines treat specially; xgrammar dislikes needless escapes.
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)
