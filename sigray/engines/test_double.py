"""A deterministic stand-in for an LLM, for tests and benchmarks. It is a test double.

It answers a detector prompt (``sep``-separated integers) with a plausible forecast:
the last value plus seeded noise, so post-processing finds real anomalies on real
signals; a multivariate one (sigllm's JSON format, ``d0:v,d1:v,...``) with ``steps``
pairs, channel 0 forecast so and the others repeated; an interleaved one (a fixed-width
digit string per step, the window ending in a comma) with its last step repeated. It answers a prompter prompt (one
ending in sigllm's ``[RESPONSE]`` marker, or a chat asking to detect anomalies) with the
window's outlying values, in the form the prompt asks for (bare numbers, a ``[...]``
list, index ranges ``[[s, e], ...]`` for sigllm's multivariate prompt, or "no
anomalies"). Chat prompts (``sampling.chat``) are read as sigllm's JSON message lists.
Answers depend only on (prompt, seed), never on batching, so a resumed run must
reproduce an uninterrupted one bit for bit.

Knobs for fault tests: ``garbage_rate`` turns that fraction of (prompt, seed) pairs into
malformed answers; ``delay_s`` makes each batch take that long; ``log_path`` appends one
line per generated prompt (``<sha1 of prompt> <seed>``) so a test can count windows
generated twice. Lines are written with O_APPEND, whole, from any number of processes.
``sigkill_once_path``: the first engine to reach its second batch creates that file
and SIGKILLs its own process (a real worker death, once per run). ``hang_once_path``:
the same, but it stops answering instead (a hung engine). ``fail_to_load``: construction
raises, as an engine whose model cannot load; ``load_s``: construction takes that long, as
loading a model does (with ``load_once_path``, only the first engine to create that file:
a load that hangs once). ``context_chars``: a context window, in
characters (the test double's tokens): a prompt that fills it is refused for good (as vLLM
refuses one longer than ``max_model_len``), and answers are cut to the room it leaves.
Answers are always cut at ``max_tokens`` characters, with the finish reason "length".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time

import numpy as np

from sigray.engines.base import LENGTH, Completion, Engine, Sampling
from sigray.errors import NoWindowFits


class TestDoubleEngine(Engine):
    """Deterministic fake LLM (a test double), configured through engine options."""

    __test__ = False  # not a pytest test class
    speed_options = frozenset(
        {"delay_s", "load_s", "load_once_path", "log_path", "sigkill_once_path", "hang_once_path"}
    )

    def __init__(
        self,
        model: str = "",
        steps: int = 5,
        sep: str = ",",
        noise: float = 0.05,
        garbage_rate: float = 0.0,
        delay_s: float = 0.0,
        log_path: str | None = None,
        sigkill_once_path: str | None = None,
        hang_once_path: str | None = None,
        fail_to_load: bool = False,
        load_s: float = 0.0,
        load_once_path: str | None = None,
        context_chars: int | None = None,
    ):
        if fail_to_load:
            raise RuntimeError("test double: the engine failed to load (as a model that does not fit would)")
        if load_once_path is None or _first_to_create(load_once_path):
            time.sleep(load_s)  # stands for loading a model
        self.steps = steps
        self.sep = sep
        self.noise = noise
        self.garbage_rate = garbage_rate
        self.delay_s = delay_s
        self.log_path = log_path
        self.sigkill_once_path = sigkill_once_path
        self.hang_once_path = hang_once_path
        self.context_chars = context_chars
        self.batches = 0

    @classmethod
    def check_fits(cls, model: str, options: dict, requests) -> None:
        """ConfigError when every prompt fills ``context_chars`` (each would be refused)."""
        context = options.get("context_chars")
        if context is None:
            return
        shortest = None
        for prompt, _ in requests:
            if len(prompt) < context:
                return
            shortest = min(shortest or len(prompt), len(prompt))
        raise NoWindowFits(
            f"no window fits the test double's context of {context} characters: the shortest prompt has "
            f"{shortest}; raise --engine-option context_chars or shorten the window (window_size)",
            shortest=shortest,
            room=context - 1,
        )

    def _generate(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> list[Completion]:
        self.batches += 1
        if self.batches == 2 and _first_to_create(self.sigkill_once_path):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.batches == 2 and _first_to_create(self.hang_once_path):
            while True:
                time.sleep(60)  # a hung engine: only killing the process ends this
        if self.delay_s:
            time.sleep(self.delay_s)  # stands for GPU time
        completions = [self._complete(p, sampling, seed) for p, sampling, seed in zip(prompts, samplings, seeds)]
        if self.log_path and prompts:
            lines = "".join(f"{_digest(p)} {seed}\n" for p, seed in zip(prompts, seeds))
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return completions

    def _complete(self, prompt: str, sampling: Sampling, seed: int) -> Completion:
        room = sampling.max_tokens
        if self.context_chars is not None:
            room = min(room, self.context_chars - len(prompt))
            if room <= 0:
                return Completion.refusal(
                    f"a prompt of {len(prompt)} characters leaves no room in the context of "
                    f"{self.context_chars} (test double)",
                    permanent=True,
                )
        texts = [self._answer(prompt, seed + k, sampling.chat) for k in range(sampling.n)]
        reasons = [LENGTH if len(t) > room else "stop" for t in texts]
        return Completion.of([t[:room] for t in texts], reasons, prompt_tokens=len(prompt))  # a character a token

    def _answer(self, prompt: str, seed: int, chat: bool) -> str:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, int(_digest(prompt)[:8], 16)])
        if rng.random() < self.garbage_rate:
            return rng.choice(["", "I cannot forecast this series.", self.sep * 3, "12 apples"])
        system, text = "", prompt
        if chat:
            messages = json.loads(prompt)
            system, text = messages[0]["content"], messages[-1]["content"]
        if _JSON_PAIR.search(prompt[-32:]):
            return self._json_forecast(prompt, rng)
        steps = prompt[: -len(self.sep)].rsplit(self.sep, 2)[-2:] if prompt.endswith(self.sep) and not chat else []
        if len(steps) == 2 and all(step.isdigit() for step in steps) and len(steps[0]) == len(steps[1]):
            return self.sep.join([steps[1]] * self.steps)  # sigllm's interleave formats: the last step, repeated
        values = self._window_values(text.removesuffix("[RESPONSE]"))
        dimensions = _DIMENSIONS.search(text)
        if dimensions:
            return self._ranges(values, int(dimensions.group(1)), rng)
        if prompt.endswith("[RESPONSE]") or "anomal" in system:
            return self._anomalies(values, rng, bare="Only return the numbers" in prompt or chat)
        lead = "" if chat else self.sep
        return lead + self.sep.join(str(v) for v in self._forecast(values, rng))

    def _forecast(self, values: list[int], rng) -> list[int]:
        level = float(np.median(values[-8:]))
        return [int(v) for v in np.maximum(0, np.round(level * (1 + self.noise * rng.standard_normal(self.steps))))]

    def _json_forecast(self, prompt: str, rng) -> str:
        """``steps`` pairs going on from the window's last step: channel 0 forecast, the rest repeated."""
        pairs = [(int(c), v) for c, v in _JSON_PAIR.findall(prompt)]
        channels = max(c for c, _ in pairs) + 1
        last = dict(pairs[-channels:])
        forecast = self._forecast([int(v) for c, v in pairs if c == 0] or [0], rng)
        answer = []
        for k in range(self.steps):
            channel = k % channels
            answer.append(f",d{channel}:{forecast[k // channels] if channel == 0 else last.get(channel, '0')}")
        return "".join(answer)

    def _ranges(self, values: list[int], dimensions: int, rng) -> str:
        """Index ranges of channel 0's outlying steps, as sigllm's multivariate prompt asks."""
        steps = np.asarray(values[: len(values) // dimensions * dimensions], dtype=float).reshape(-1, dimensions)
        outlying = np.flatnonzero(_outlying(steps[:, 0])).tolist()
        ranges = []
        for index in outlying:
            if ranges and index == ranges[-1][1] + 1:
                ranges[-1][1] = index
            else:
                ranges.append([index, index])
        named = [r for r in ranges[:5] if rng.random() > 0.2]
        return "[" + ", ".join(f"[{s}, {e}]" for s, e in named) + "]" if named else "no anomalies"

    def _window_values(self, text: str) -> list[int]:
        """The window: the run of digits and separators the prompt ends with."""
        match = re.search(rf"[0-9][0-9\s{re.escape(self.sep)}]*$", text.strip())
        digits = re.sub(r"\s", "", match.group()) if match else ""
        return [int(v) for v in digits.split(self.sep) if v] or [0]

    def _anomalies(self, values: list[int], rng, bare: bool) -> str:
        """The values far from the window's median (robust z > 3), a few dropped at random."""
        series = np.asarray(values, dtype=float)
        outlying = sorted({int(v) for v in series[_outlying(series)]})
        named = [v for v in outlying[:5] if rng.random() > 0.2]
        if bare:
            return self.sep.join(str(v) for v in named)
        return "[" + ", ".join(str(v) for v in named) + "]" if named else "no anomalies"


def _outlying(series: np.ndarray) -> np.ndarray:
    """Which values lie far from the series' median (robust z-score over 3)."""
    spread = np.median(np.abs(series - np.median(series))) or 1.0
    return np.abs(series - np.median(series)) / spread > 3


_JSON_PAIR = re.compile(r"d(\d+):(\d+)")
_DIMENSIONS = re.compile(r"multivariate time series of (\d+) dimensions")


def _first_to_create(path: str | None) -> bool:
    """Create ``path`` holding this process's pid; True for the one process (of any number)
    that created it. The pid tells a test which worker (and so which node) it was."""
    if not path:
        return False
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return True


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
