"""The contract every LLM engine meets: prompts in, one ``Completion`` per prompt out.

Engines know nothing about windows, stores or retries; the worker owns those. Every
engine goes through ``Engine.generate``, which checks what every engine must (one
sampling and one seed per prompt, an open engine, ``n`` texts back per prompt) and calls
the engine's own ``_generate``. An engine declares the options that only change its
speed or memory (``speed_options``); every other option is part of the run's identity.

Errors, by kind: an exception from ``generate`` means the engine cannot serve (its
process, its device or its server is gone); the worker is replaced and its windows go
back uncharged. A request the engine refuses is not an exception but a refused
``Completion``: ``permanent`` when the same request would be refused again (a prompt
longer than the context), so that window fails at once with the reason; else it costs
the window one attempt. Only that prompt is affected: the rest of the batch goes on.

Batches in flight: ``submit`` starts a batch and returns at once, so a worker keeps the
engine fed (``concurrency`` prompts at once, plus the next batch) while it checks and
reports finished ones; the engine's own scheduler (vLLM's continuous batching, an HTTP
server's) fills the room a finishing batch leaves with the next one's requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from sigray.rate_limit import RateLimits


@dataclass(frozen=True)
class Sampling:
    """How to sample the answers of one prompt.

    Attributes:
        n: answers sampled per prompt (sigllm's ``samples``).
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass.
        max_tokens: hard cap on generated tokens per answer.
        regex: when set, answers must match this regular expression in full
            (vLLM structured outputs); engines that cannot constrain ignore it.
        chat: the prompt is a chat request, a JSON list of ``{"role", "content"}``
            messages (sigllm's GPT pipelines); the engine applies the model's chat template.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    regex: str | None = None
    chat: bool = False


LENGTH = "length"
"""The finish reason of an answer stopped by its token limit (vLLM's and OpenAI's term)."""


@dataclass(frozen=True)
class Completion:
    """An engine's outcome for one prompt: ``n`` texts and why each stopped, or a refusal.

    Attributes:
        texts: the sampled answers, in sample order (empty when refused).
        finish_reasons: one per text, in vLLM's and OpenAI's terms (``"stop"``,
            ``"length"``: cut by ``max_tokens`` or the context); None when the engine
            does not say (then no answer is known to be cut).
        refused: why the engine would not answer this prompt; "" when it answered.
        permanent: the refusal would repeat for the same request (too long for the
            context), so retrying with another seed is pointless.
        prompt_tokens: the prompt's length in the served model's tokens, when the engine
            says (vLLM's ``prompt_token_ids``, an OpenAI server's ``usage.prompt_tokens``).
    """

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    refused: str = ""
    permanent: bool = False
    prompt_tokens: int | None = None

    @classmethod
    def of(
        cls, texts: list[str], finish_reasons: list[str | None] | None = None, prompt_tokens: int | None = None
    ) -> Completion:
        reasons = list(finish_reasons) if finish_reasons is not None else [None] * len(texts)
        return cls(list(texts), reasons, prompt_tokens=prompt_tokens)

    @classmethod
    def refusal(cls, reason: str, permanent: bool) -> Completion:
        return cls(refused=reason, permanent=permanent)

    def cut(self, sample: int) -> bool:
        """Whether sample ``sample`` was stopped by a length limit (it may end mid-value)."""
        return self.finish_reasons[sample] == LENGTH


class Engine:
    """Generates answers for a batch of prompts; subclasses implement ``_generate``.

    ``seeds[i]`` seeds prompt ``i``: the same (prompt, sampling, seed) must give the same
    texts whatever else is in the batch, so a retried or resumed window is reproducible.
    """

    speed_options: ClassVar[frozenset[str]] = frozenset()
    """Constructor options that never change answers (left out of the run's identity)."""

    concurrency: int = 1
    """Prompts the engine works on at once (vLLM's ``max_num_seqs``, the HTTP engine's
    ``max_concurrency``); a worker keeps that many in flight, plus one batch waiting."""

    holds_model: ClassVar[bool] = True
    """Whether the engine runs the model in its own process (so its worker takes a GPU
    when the cluster has them); False for one that asks a server."""

    _closed = False
    _thread: ThreadPoolExecutor | None = None

    @classmethod  # noqa: B027 - an optional hook: most engines cannot tell before they load
    def check_ready(cls, model: str, options: dict) -> None:
        """Raise ConfigError when this engine cannot serve ``model`` with ``options``.

        The driver calls it before anything is written or started; engines that can tell
        (a server to reach, a model it serves) override it. Most find out only as they load.
        """

    @classmethod  # noqa: B027 - an optional hook, for engines that can ask before the run
    def check_requests(cls, model: str, options: dict, sampling: Sampling) -> None:
        """Raise ConfigError when the engine cannot take requests sampled as ``sampling`` (its
        prompt format, chat or not; its answer constraint). The driver calls it after
        ``check_ready``, before anything is written or started."""

    @classmethod  # noqa: B027 - an optional hook, for engines that know their context before they load
    def check_fits(cls, model: str, options: dict, requests: Iterable[tuple[str, Sampling]]) -> None:
        """Raise ConfigError when not one of the run's ``(prompt, sampling)`` pairs leaves room
        for its answer in the context ``options`` give the model. A window that does not fit is
        refused by the engine on its own (failed, with its reason); a run where none fits would
        only load engines to fail every window, so the driver asks first, stopping at the
        first that fits."""

    @classmethod
    def rate_limits(cls, options: dict) -> RateLimits:
        """The provider's limits ``options`` set, held for the whole run (none by default).

        When there are any, the run keeps one schedule for all its workers and hands each
        engine a way to ask it (``share_schedule``).
        """
        return RateLimits()

    def share_schedule(self, reserve) -> None:  # noqa: B027 - only engines with rate limits use it
        """Ask the run's shared schedule before each request: ``await reserve(tokens)`` gives
        the seconds to wait (see ``sigray.rate_limit``)."""

    def generate(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> list[Completion]:
        """One ``Completion`` per prompt, in prompt order: ``samplings[i].n`` texts, or a refusal.

        Raises:
            ValueError: prompts, samplings and seeds differ in length.
            RuntimeError: the engine was closed, or returned the wrong number of texts.
            Any other exception: the engine cannot serve (the worker is replaced).
        """
        return self.submit(prompts, samplings, seeds).result()

    def submit(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> Future[list[Completion]]:
        """Start generating and return at once; the future gives what ``generate`` returns, or
        raises what it raises (the length checks raise here). Batches submitted together are
        answered concurrently where the engine can, each exactly as if generated alone."""
        if not len(prompts) == len(samplings) == len(seeds):
            raise ValueError(
                f"got {len(prompts)} prompts, {len(samplings)} samplings and {len(seeds)} seeds; "
                "give one sampling and one seed per prompt."
            )
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new engine.")
        if not prompts:
            return _resolved([])
        checked: Future[list[Completion]] = Future()

        def check(started: Future) -> None:
            try:
                checked.set_result(self._checked(started.result(), samplings))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the batch
                checked.set_exception(exc)

        self._submit(prompts, samplings, seeds).add_done_callback(check)
        return checked

    def _checked(self, answers: list, samplings: list[Sampling]) -> list[Completion]:
        """``_generate``'s answers as ``Completion``s, or RuntimeError when their counts are wrong."""
        completions = [c if isinstance(c, Completion) else Completion.of(c) for c in answers]
        if len(completions) != len(samplings) or any(
            not c.refused and not len(c.texts) == len(c.finish_reasons) == s.n for c, s in zip(completions, samplings)
        ):
            raise RuntimeError(f"{type(self).__name__} returned the wrong number of texts for its prompts.")
        return completions

    def close(self) -> None:
        """Free the engine's processes and memory. Safe to call twice; batches still waiting are cancelled."""
        if not self._closed:
            self._closed = True
            if self._thread is not None:
                self._thread.shutdown(wait=False, cancel_futures=True)  # a hung batch must not hold close up
            self._close()

    def _submit(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> Future:
        """The engine's own start of a batch. By default ``_generate`` runs on one thread of the
        engine's own, a batch at a time, so its caller checks one batch while the next generates;
        engines that answer several batches at once override this instead of ``_generate``."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        return self._thread.submit(self._generate, prompts, samplings, seeds)

    def _generate(
        self, prompts: list[str], samplings: list[Sampling], seeds: list[int]
    ) -> list[Completion] | list[list[str]]:
        """The engine's own generation of one batch (equal, non-empty lists), blocking; may return
        ``Completion``s or, for engines that do not report finish reasons, lists of texts."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate nor _submit.")

    def _close(self) -> None:  # noqa: B027 - optional hook: most engines hold nothing to free
        """The engine's own clean-up."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ForeignEngine(Engine):
    """A user's engine class that does not derive from ``Engine``, held to the same contract:
    it needs ``generate(prompts, samplings, seeds)``; ``close()`` is called when it has one."""

    def __init__(self, engine):
        self.engine = engine
        self.speed_options = frozenset(getattr(engine, "speed_options", ()))
        self.concurrency = int(getattr(engine, "concurrency", 1))

    def _generate(self, prompts, samplings, seeds):
        return self.engine.generate(prompts, samplings, seeds)

    def _close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def _resolved(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
