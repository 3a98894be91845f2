"""An engine that asks an OpenAI-compatible HTTP server (``vllm serve``, or any server that
speaks OpenAI's completions and chat completions API) instead of loading a model.

Requests go out concurrently (up to ``max_concurrency`` per worker, from every batch in
flight: one event loop on a thread of the engine's own) through the official
``openai`` client, which retries connection errors, timeouts, 408, 409, 429 and 5xx with
exponential backoff and jitter, honouring ``Retry-After``. What it cannot get past is an
exception: the engine cannot serve, the worker is replaced and its windows go back
uncharged. A request the server refuses as bad (400, 413, 422: a prompt longer than the
context) is a permanent refusal of that prompt alone.

The served model's name (``--model``) is part of the run's identity; where it is served
(``base_url``), the key and the client's limits are not. The key is read from the
environment variable ``api_key_env`` names, never taken as an option, so it never reaches
a store, a fingerprint or a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import replace

from sigray.engines.base import Completion, Engine, Sampling
from sigray.errors import ConfigError
from sigray.rate_limit import RateLimits, Schedule, request_tokens

log = logging.getLogger(__name__)
_NO_KEY = "EMPTY"  # what vLLM's server accepts when it was started without --api-key
_REFUSED_STATUS = (400, 413, 422)


class OpenAIEngine(Engine):
    """Generates answers through an OpenAI-compatible server.

    Args:
        model: the served model's name (``/v1/models`` lists them).
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: the environment variable holding the API key; None for a server
            without one (vLLM's default).
        max_concurrency: requests in flight at once from this worker.
        timeout_s: one request's time limit, seconds.
        max_retries: retries of one request (429, 5xx, connection errors, timeouts)
            before the engine gives up and the worker is replaced.
        requests_per_s, tokens_per_min: the provider's rate limits, held for the whole
            run (every worker asks one shared schedule; see ``sigray.rate_limit``).

    Mistral-style prompts go to ``/v1/completions``; chat prompts (``sampling.chat``, the
    GPT pipelines) to ``/v1/chat/completions``. ``seed`` is sent per request (vLLM gives
    sample ``k`` the seed ``seed + k``, as in process); ``sampling.regex`` as vLLM's
    ``structured_outputs`` (other servers may ignore it: answers are validated anyway).
    """

    speed_options = frozenset(
        {"base_url", "api_key_env", "max_concurrency", "timeout_s", "max_retries", "requests_per_s", "tokens_per_min"}
    )
    holds_model = False

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 32,
        timeout_s: float = 300.0,
        max_retries: int = 8,
        requests_per_s: float | None = None,
        tokens_per_min: float | None = None,
    ):
        from openai import AsyncOpenAI

        self.model = model
        self.concurrency = max_concurrency
        limits = RateLimits(requests_per_s, tokens_per_min)
        self._reserve = _local(Schedule(limits)) if limits else None  # the run shares one (share_schedule)
        self._client = AsyncOpenAI(
            base_url=_base_url(base_url), api_key=_api_key(api_key_env), timeout=timeout_s, max_retries=max_retries
        )
        self._limit = asyncio.Semaphore(max_concurrency)  # shared by every batch in flight
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="openai-engine", daemon=True)
        self._loop_thread.start()

    @classmethod
    def check_ready(cls, model: str, options: dict) -> None:
        """ConfigError, before any work starts, when the server cannot be reached, the key's
        variable is not set, the server does not serve ``model``, or a rate limit is not a positive number."""
        from openai import APIConnectionError, APIStatusError, OpenAI

        cls.rate_limits(options)
        base_url = _base_url(options.get("base_url"))
        if not model:
            raise ConfigError(
                "the openai engine needs --model: the name the server serves the model under "
                f"(its {base_url}/models lists them)."
            )
        client = OpenAI(base_url=base_url, api_key=_api_key(options.get("api_key_env")), timeout=30, max_retries=2)
        try:
            served = sorted(m.id for m in client.models.list())
        except APIConnectionError as exc:
            raise ConfigError(
                f"cannot reach the OpenAI-compatible server at {base_url} ({exc}); start it, or fix "
                "--engine-option base_url=..."
            ) from None
        except APIStatusError as exc:
            raise ConfigError(
                f"the server at {base_url} refused to list its models ({exc.status_code}: {exc.message})"
            ) from None
        if model not in served:
            names = ", ".join(served) or "nothing"
            raise ConfigError(
                f"the server at {base_url} does not serve model {model!r}; it serves: {names}. Pass one as --model."
            )

    @classmethod
    def check_requests(cls, model: str, options: dict, sampling: Sampling) -> None:
        """ConfigError when the server cannot take the run's requests: chats for a model without a
        chat template, completions on a chat-only endpoint, or the answer constraint as vLLM's
        ``structured_outputs``. Asks with a one-token answer to a short prompt of the same
        format (a long first prompt would be that window's refusal, not the run's)."""
        from openai import APIError

        base_url = _base_url(options.get("base_url"))
        engine = cls(model, **{**options, "max_retries": 2})
        try:
            refused = engine._probe(sampling, sampling.regex)
            if not refused:
                return
            if sampling.regex is not None and not engine._probe(sampling, None):
                raise ConfigError(
                    f"the server at {base_url} refuses the answer constraint (vLLM's structured_outputs): {refused}. "
                    "Run with --no-constrain (answers are validated either way)."
                )
            kind = "chat completions" if sampling.chat else "completions"
            raise ConfigError(f"the server at {base_url} cannot take {kind} requests for model {model!r}: {refused}")
        except APIError as exc:  # throttled or failing for now: not the settings' fault; the run retries
            log.warning("could not check the request format with the server at %s (%s); starting anyway", base_url, exc)
        finally:
            engine.close()

    def _probe(self, sampling: Sampling, regex: str | None) -> str:
        """Why the server refuses a one-token answer to a short prompt sampled as ``sampling``
        with ``regex``; "" when it answers."""
        from openai import NotFoundError

        prompt = json.dumps([{"role": "user", "content": "1,2,3"}]) if sampling.chat else "1,2,3"
        try:
            asked = replace(sampling, n=1, max_tokens=1, regex=regex)
            return self._run(self._one(prompt, asked, 0)).result().refused
        except NotFoundError as exc:  # a chat-only endpoint's answer to completions
            return f"the server answered 404: {_message(exc)}"

    @classmethod
    def rate_limits(cls, options: dict) -> RateLimits:
        return RateLimits(options.get("requests_per_s"), options.get("tokens_per_min"))

    def share_schedule(self, reserve) -> None:
        self._reserve = reserve

    def _submit(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> Future:
        return self._run(self._all(prompts, samplings, seeds))

    def _run(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _all(self, prompts, samplings, seeds) -> list[Completion]:
        async def one(prompt, sampling, seed):
            async with self._limit:
                if self._reserve is not None:  # the request's turn under the rate limits
                    await asyncio.sleep(await self._reserve(request_tokens(prompt, sampling.max_tokens, sampling.n)))
                return await self._one(prompt, sampling, seed)

        return list(await asyncio.gather(*(one(p, s, seed) for p, s, seed in zip(prompts, samplings, seeds))))

    async def _one(self, prompt: str, sampling: Sampling, seed: int) -> Completion:
        from openai import APIStatusError

        greedy = sampling.temperature == 0
        request = {
            "model": self.model,
            "n": 1 if greedy else sampling.n,  # as in process: one greedy answer, repeated
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": seed,
        }
        if sampling.regex:
            request["extra_body"] = {"structured_outputs": {"regex": sampling.regex}}
        try:
            if sampling.chat:
                response = await self._client.chat.completions.create(messages=json.loads(prompt), **request)
                texts = [(c.index, c.message.content or "", c.finish_reason) for c in response.choices]
            else:
                response = await self._client.completions.create(prompt=prompt, **request)
                texts = [(c.index, c.text, c.finish_reason) for c in response.choices]
        except APIStatusError as exc:
            if exc.status_code in _REFUSED_STATUS:
                return Completion.refusal(f"the server answered {exc.status_code}: {_message(exc)}", permanent=True)
            raise
        texts.sort()
        repeat = sampling.n if greedy else 1
        tokens = getattr(response.usage, "prompt_tokens", None)  # servers that count tokens say so
        return Completion.of([t for _, t, _ in texts] * repeat, [r for _, _, r in texts] * repeat, tokens)

    def _close(self) -> None:
        self._run(self._client.close()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()


def _local(schedule: Schedule):
    """``schedule.reserve`` as the awaitable the engine asks (as it asks the run's shared one)."""

    async def reserve(tokens: int) -> float:
        return schedule.reserve(tokens)

    return reserve


def _base_url(base_url: str | None) -> str:
    if not base_url:
        raise ConfigError("the openai engine needs the server's address: --engine-option base_url=http://HOST:PORT/v1")
    return base_url


def _api_key(variable: str | None) -> str:
    if not variable:
        return _NO_KEY
    key = os.environ.get(variable)
    if not key:
        raise ConfigError(f"api_key_env names {variable}, which is not set in this environment; export it first.")
    return key


def _message(exc) -> str:
    """The server's own error message (OpenAI's error body), without the request."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    text = error.get("message") if isinstance(error, dict) else None
    return str(text or exc.message)[:500]
