"""What a valid LLM answer looks like, per pipeline family (detector, prompter).

Workers import this module (it is light: sigllm's parser only, no mlblocks), parse
each answer with sigllm's own code and reject the ones post-processing could not use.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sigray.engines.base import Sampling


@dataclass(frozen=True)
class Verdict:
    """One answer, checked: ``values`` when valid, else ``reason`` says why not."""

    values: np.ndarray | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.values is not None


class AnswerFormat(Protocol):
    """What workers need of a pipeline's answers: how to read, check and constrain them.

    The constraint of a window is a function of that window alone (``limits``), never of
    the other windows or signals of a run, so a window asks the same thing in any store.
    ``check`` is given the window's ``max_digits`` (from ``limits``): the formats whose
    reading depends on the window's layout (sigllm's interleave formats) read it there.
    """

    horizon: int  # numbers kept per sample in the store's ``values``

    @property
    def identity(self) -> dict: ...

    def limits(self, window: str) -> tuple[int, int]: ...

    def regex_for(self, max_digits: int) -> str: ...

    def response(self, text: str) -> str: ...

    def check(self, text: str, cut: bool = False, max_digits: int = 0) -> Verdict: ...


_CUT = "cut by the token limit inside a value sigllm keeps (raise max_tokens or the context length)"


def _as_cut(verdict: Verdict, ended: bool) -> Verdict:
    """The verdict on an answer stopped by its length limit: valid only when what sigllm
    keeps of it provably ended; invalid ones name the cut, their likely cause."""
    if verdict.ok and ended:
        return verdict
    return Verdict(None, _CUT if verdict.ok else f"{_CUT} ({verdict.reason})")


def _same_values(a: Verdict, b: Verdict) -> bool:
    return a.ok and b.ok and np.array_equal(a.values, b.values)


def _head(text: str, sep: str) -> str:
    """``text`` up to its last separator: what a cut answer holds for certain."""
    return text[: text.rfind(sep)] if sep in text else ""


def _checked(read, text: str, sep: str, cut: bool) -> Verdict:
    """``read(text)``; for an answer ``cut`` at its length limit, valid only when the values
    read are the same without its unfinished tail (after the last ``sep``)."""
    verdict = read(text)
    return _as_cut(verdict, verdict.ok and _same_values(verdict, read(_head(text, sep)))) if cut else verdict


def sampling_for(sampling: Sampling, answers: AnswerFormat, max_digits: int, max_tokens: int, constrained: bool):
    """One window's sampling: the run's, with the window's token budget and, when
    ``constrained``, its regex (what workers send the engine)."""
    regex = answers.regex_for(max_digits) if constrained else None
    return dataclasses.replace(sampling, max_tokens=max_tokens, regex=regex)


def widest_value(window: str, sep: str) -> int:
    """Characters of the widest value in a window string (digits; sigllm writes integers)."""
    return max((len(v) for v in "".join(window.split()).split(sep)), default=0)


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
    continuation: bool = True
    spaced: bool = False

    @property
    def horizon(self) -> int:
        """Values kept per answer after sigllm's truncation."""
        return self.trunc or self.steps

    def limits(self, window: str) -> tuple[int, int]:
        """(widest value allowed, token budget) for one window: one digit wider than the
        window's widest value, and a token per character of ``steps`` such values."""
        max_digits = widest_value(window, self.sep) + 1
        per_value = 2 * max_digits + len(self.sep) + 2 if self.spaced else max_digits + len(self.sep)
        return max_digits, self.steps * per_value + 2

    def regex_for(self, max_digits: int) -> str:
        """Exactly ``steps`` values, separated (and, for a continuation, introduced) by ``sep``."""
        sep = _regex_escape(self.sep)
        if self.spaced:
            sep, value = f" ?{sep} ?", f"[0-9]( ?[0-9]){{0,{max_digits - 1}}}"
        else:
            value = f"[0-9]{{1,{max_digits}}}"
        first = f"{sep}{value}" if self.continuation else value
        return f"{first}({sep}{value}){{{self.steps - 1}}}"

    @property
    def identity(self) -> dict:
        """The rules answers are asked and checked by, for the generation identity."""
        return {
            "kind": "forecast",
            "sep": self.sep,
            "steps": self.steps,
            "trunc": self.trunc,
            "errors": self.errors,
            "continuation": self.continuation,
            "spaced": self.spaced,
            "limits": "per window: widest value + 1 digit",
        }

    def format1_identity(self, max_digits: int) -> dict:
        """What format-1 stores recorded instead (a run-wide widest value)."""
        return {"sep": self.sep, "steps": self.steps, "max_digits": max_digits}

    def response(self, text: str) -> str:
        """sigllm's forecaster returns the continuation as generated."""
        return text

    def check(self, text: str, cut: bool = False, max_digits: int = 0) -> Verdict:
        """sigllm's reading of one answer. ``cut``: the engine stopped it at its length
        limit, so its last value may be incomplete; valid only when every value sigllm
        keeps is followed by a separator (the same values with the tail dropped)."""
        return _checked(self._read, text, self.sep, cut)

    def _read(self, text: str) -> Verdict:
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


@dataclass(frozen=True)
class JsonForecastAnswers:
    """Multivariate detector answers in sigllm's JSON format: the continuation of a window
    written ``d0:v,d1:v,...`` per step (``sigllm.primitives.formatting.json_format``).

    sigllm keeps the first ``trunc`` values of channel ``target_column`` (``format_as_integer``
    reads ``d<target>:<digits>`` pairs and drops every other channel), so that is what is
    asked and checked: valid when sigllm's own reader finds ``trunc`` values of the target
    (stock sigllm crashes in ``Scalar2Float`` on a window that lacks one). The regex asks
    for the target's value first and lets further pairs follow; the token budget covers
    the pairs up to the last target value sigllm keeps.
    """

    trunc: int
    target_column: int = 0

    sep = ","

    @property
    def horizon(self) -> int:
        return self.trunc

    def limits(self, window: str) -> tuple[int, int]:
        """(widest value allowed, token budget): one digit wider than the window's widest
        value; a token per character of the pairs up to the ``trunc``-th target value
        (``channels`` pairs a step, counted in the window)."""
        pairs = _JSON_PAIR.findall(window)
        max_digits = max((len(value) for _, value in pairs), default=0) + 1
        channels = len({channel for channel, _ in pairs}) or 1
        pair = len(f",d{channels - 1}:") + max_digits
        return max_digits, ((self.trunc - 1) * channels + self.target_column + 1) * pair + 2

    def regex_for(self, max_digits: int) -> str:
        value = f"[0-9]{{1,{max_digits}}}"
        first = f",d0:{value}"
        return first if self.trunc == 1 and self.target_column == 0 else f"{first}(,d[0-9]{{1,4}}:{value})*"

    @property
    def identity(self) -> dict:
        """The rules answers are asked and checked by, for the generation identity."""
        return {
            "kind": "json_forecast",
            "trunc": self.trunc,
            "target_column": self.target_column,
            "limits": "per window: widest value + 1 digit; pairs up to the last target value kept",
        }

    def format1_identity(self, max_digits: int) -> dict:
        """Format-1 stores never held multivariate answers: an identity none of them has."""
        return self.identity

    def response(self, text: str) -> str:
        """sigllm's forecaster returns the continuation as generated."""
        return text

    def check(self, text: str, cut: bool = False, max_digits: int = 0) -> Verdict:
        """sigllm's reading of one answer; a ``cut`` one is valid only when the same values
        are read without its unfinished last pair."""
        return _checked(self._read, text, self.sep, cut)

    def _read(self, text: str) -> Verdict:
        from sigllm.primitives.formatting.json_format import JSONFormat

        if not text or not text.strip():
            return Verdict(None, "empty answer")
        kept = JSONFormat().format_as_integer([[text]], trunc=self.trunc, target_column=self.target_column)[0][0]
        found = [v for v in kept if v is not None]
        if len(found) < self.trunc:
            return Verdict(None, f"{len(found)} value(s) of channel d{self.target_column}, expected {self.trunc}")
        return Verdict(np.asarray(found, dtype=float))


_JSON_PAIR = re.compile(r"d(\d+):(\d+)")


# sigllm's other multivariate window formats (sigllm.primitives.formatting), by module name.
SEPARATED_FORMATS = ("value_concatenation", "univariate_control")  # values written with a separator
INTERLEAVE_FORMATS = ("value_interleave", "digit_interleave")  # a fixed-width digit string per step
FORMAT_CLASSES = {  # module -> its class
    "value_concatenation": "ValueConcatenation",
    "univariate_control": "UnivariateControl",
    "value_interleave": "ValueInterleave",
    "digit_interleave": "DigitInterleave",
}


@dataclass(frozen=True)
class FormattedForecastAnswers:
    """Multivariate detector answers in one of sigllm's other window formats:

    - ``value_concatenation``: each step's ``channels`` values in a row, ``v0,v1,...,v0,v1,...``;
    - ``univariate_control``: the target channel alone, ``v,v,...`` (the control of a study);
    - ``value_interleave`` / ``digit_interleave``: each step one string of ``channels`` values,
      each padded to the signal's width (values side by side, or digit by digit), the window
      ending in a comma.

    Valid when that format's own ``format_as_integer`` reads ``trunc`` values of channel
    ``target_column`` from the answer (stock sigllm crashes later, in ``Scalar2Float``, on an
    answer that lacks one). The interleave readers need the width of one value, which their
    ``format_as_string`` sets from the whole signal: a window's ``max_digits`` is that width
    (a step of the window has ``width x channels`` digits), and the regex asks for ``trunc``
    steps of exactly that many digits. The separated formats' regex asks for the values up to
    the last one sigllm keeps, each at most one digit wider than the window's widest.
    """

    method: str  # the format's module in sigllm.primitives.formatting
    trunc: int
    target_column: int = 0
    channels: int = 1  # the signal's channels (each step of the window holds them all, but in univariate_control)

    sep = ","  # sigllm's formats take their separator as a constructor setting and never use it: always ","

    @property
    def horizon(self) -> int:
        return self.trunc

    @property
    def interleaved(self) -> bool:
        return self.method in INTERLEAVE_FORMATS

    @property
    def _values_needed(self) -> int:
        """Values an answer of a separated format holds up to the last one sigllm keeps."""
        if self.method == "univariate_control":  # the window holds the target channel alone
            return self.trunc
        return (self.trunc - 1) * self.channels + self.target_column + 1

    def limits(self, window: str) -> tuple[int, int]:
        if self.interleaved:
            step = len(window.rstrip(self.sep).rsplit(self.sep, 1)[-1])  # width x channels digits
            return step // self.channels, self.trunc * (step + 1) + 2
        max_digits = widest_value(window, self.sep) + 1
        return max_digits, self._values_needed * (max_digits + 1) + 2

    def regex_for(self, max_digits: int) -> str:
        if self.interleaved:  # the window ends in a comma: the answer starts with a step
            step = f"[0-9]{{{max_digits * self.channels}}}"
            return step + (f"(,{step}){{{self.trunc - 1}}}" if self.trunc > 1 else "")
        value = f",[0-9]{{1,{max_digits}}}"
        return value + (f"({value}){{{self._values_needed - 1}}}" if self._values_needed > 1 else "")

    @property
    def identity(self) -> dict:
        """The rules answers are asked and checked by, for the generation identity."""
        return {
            "kind": "formatted_forecast",
            "method": self.method,
            "trunc": self.trunc,
            "target_column": self.target_column,
            "channels": self.channels,
            "limits": "per window: widest value + 1 digit (interleaved: its width); values up to the last kept",
        }

    def format1_identity(self, max_digits: int) -> dict:
        """Format-1 stores never held multivariate answers: an identity none of them has."""
        return self.identity

    def response(self, text: str) -> str:
        """sigllm's forecaster returns the continuation as generated."""
        return text

    def check(self, text: str, cut: bool = False, max_digits: int = 0) -> Verdict:
        """sigllm's reading of one answer (``max_digits``: the window's width, for the
        interleave formats); a ``cut`` one is valid only when the same values are read
        without its unfinished last value or step."""
        return _checked(lambda answer: self._read(answer, max_digits), text, self.sep, cut)

    def reader(self, width: int = 0):
        """sigllm's own reader of this format, as its pipeline would hold it."""
        import importlib

        module = importlib.import_module(f"sigllm.primitives.formatting.{self.method}")
        reader = getattr(module, FORMAT_CLASSES[self.method])(num_dims=self.channels, target_column=self.target_column)
        if self.interleaved:
            reader.metadata["width_used"] = width  # set by format_as_string on the signal
        return reader

    def _read(self, text: str, width: int) -> Verdict:
        if not text or not text.strip():
            return Verdict(None, "empty answer")
        if self.interleaved and width < 1:
            raise ValueError("an interleave format's answers are read with their window's width (max_digits)")
        try:
            read = self.reader(width).format_as_integer([[text]], trunc=self.trunc, target_column=self.target_column)
        except (ValueError, TypeError, IndexError) as exc:
            return Verdict(None, f"unparseable answer: {type(exc).__name__}: {exc}")
        found = [v for v in _flat(read[0]) if v is not None]
        if len(found) < self.trunc or len(_flat(read[0])) != len(found):
            return Verdict(None, f"{len(found)} value(s) of channel {self.target_column}, expected {self.trunc}")
        return Verdict(np.asarray(found[: self.trunc], dtype=float))


def _flat(values) -> list:
    """The scalars of sigllm's nested reader output (lists and object arrays), in order."""
    if isinstance(values, (list, tuple, np.ndarray)):
        return [x for v in values for x in _flat(v)]
    return [values]


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
    anomalous_percent: float = 0.5
    after_marker: bool = False
    trunc: int | None = None
    errors: str = "ignore"

    horizon = 1

    def limits(self, window: str) -> tuple[int, int]:
        """(widest value allowed, token budget) for one window; the budget follows sigllm's
        (the window's length x ``anomalous_percent``; characters bound tokens), at least 16.
        Index ranges (``interval``) may name any position of the window, however narrow its values."""
        widest = widest_value(window, self.sep) + 1
        if self.interval:
            widest = max(widest, len(str(max(self.window_size - 1, 0))))
        return widest, max(16, int(len(window) * self.anomalous_percent))

    def regex_for(self, max_digits: int) -> str:
        number = f"[0-9]{{1,{max_digits}}}"
        if not self.parsed:
            sep = _regex_escape(self.sep)
            return f"({number}({sep}{number})*)?"
        if self.interval:
            pair = rf"\[{number}, ?{number}\]"
            return rf"{_NO_ANOMALIES}|\[{pair}(, ?{pair})*\]"
        return rf"{_NO_ANOMALIES}|\[{number}(, ?{number})*\]"

    @property
    def identity(self) -> dict:
        """The rules answers are asked and checked by, for the generation identity."""
        return {
            "kind": "anomalies",
            "sep": self.sep,
            "parsed": self.parsed,
            "interval": self.interval,
            "window_size": self.window_size,
            "anomalous_percent": self.anomalous_percent,
            "after_marker": self.after_marker,
            "trunc": self.trunc,
            "errors": self.errors,
            "limits": "per window: widest value + 1 digit; len(window) x anomalous_percent tokens",
        }

    def format1_identity(self, max_digits: int) -> dict:
        """What format-1 stores recorded instead (a run-wide widest value)."""
        return {"sep": self.sep, "max_digits": max_digits}

    def response(self, text: str) -> str:
        """What sigllm's prompter returns for a generated continuation of the prompt.

        With ``after_marker`` (sigllm's HF prompter without ``restrict_tokens``) sigllm decodes
        prompt and answer together and keeps what follows the prompt's ``[RESPONSE]`` marker,
        stripped: the continuation up to any further marker. Otherwise the continuation as is.
        """
        return text.split("[RESPONSE]")[0].strip() if self.after_marker else text

    def check(self, text: str, cut: bool = False, max_digits: int = 0) -> Verdict:
        """sigllm's reading of one answer. ``cut``: stopped at the length limit, so valid
        only when what sigllm keeps provably ended: a closed ``[...]`` (which sigllm's
        pattern requires anyway), a closed list of intervals, or bare values followed by
        a separator."""
        verdict = self._read(text)
        return _as_cut(verdict, verdict.ok and self._ended(text, verdict)) if cut else verdict

    def _ended(self, text: str, verdict: Verdict) -> bool:
        if not self.parsed:
            return _same_values(verdict, self._read(_head(text, self.sep)))
        if self.interval:
            return _NO_ANOMALIES in text.lower() or re.search(r"\]\s*\]", text) is not None
        return True

    def _read(self, text: str) -> Verdict:
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
