"""The vLLM engine: one ``vllm.LLM`` in this process, driven by one thread of its own.

Batches are not generated one ``llm.generate`` call at a time: each prompt is added to the
engine as its batch arrives (``LLM.enqueue``) and the thread steps the engine while any
request is unfinished, so vLLM's continuous batching fills the room a finishing batch
leaves with the next batch's requests, as one ``generate`` call on all prompts would.

vLLM is imported when an engine is constructed, not when this module is imported (the
import alone takes 3-11 s on CPU, warm or cold page cache).
"""

from __future__ import annotations

import functools
import json
import queue
import threading
from concurrent.futures import Future
from typing import Any

from sigray.engines.base import Completion, Engine, Sampling
from sigray.errors import NoWindowFits

CPU_DEFAULTS: dict[str, Any] = {
    # torch.compile adds minutes on CPU and changes greedy text; eager is the tested path.
    "enforce_eager": True,
    # On CPU this is the fraction of the node's memory given to the worker; the default
    # (0.92) fails at engine start (see VLLM_CPU.md).
    "gpu_memory_utilization": 0.2,
    # A seeded request whose prefill is split across steps kills the CPU worker: vLLM rewinds
    # its generator with set_offset(), which CPU generators lack ("CPU Generator does not use
    # offset"). Seen with 64 prompts of ~300 tokens against the default 4096-token step budget.
    "enable_chunked_prefill": False,
    "max_model_len": 2048,
    "dtype": "auto",
}
"""``vllm.LLM`` options used on machines without a CUDA device, unless overridden."""

_MIN_BATCHED_TOKENS = 4096  # vLLM's default per-step token budget
_SPECIAL_TOKENS = 8  # beginning-of-sequence and word-start tokens a tokenizer may add to a text
_CHAT_TEMPLATE_TOKENS = 512  # what a chat template may add around the messages (roles, a default system prompt)

GPU_DEFAULTS: dict[str, Any] = {
    "max_model_len": 2048,
    "dtype": "auto",
}
"""``vllm.LLM`` options used when ``torch.cuda.is_available()``, unless overridden."""


class VllmEngine(Engine):
    """Generates answers with ``vllm.LLM``; raw-text continuation, no chat template.

    ``options`` go to ``vllm.LLM(model=model, **options)`` on top of ``CPU_DEFAULTS`` or
    ``GPU_DEFAULTS``. Construction starts the engine processes (~30 s on CPU); the caller
    should build one engine and reuse it, and call ``close()`` (or use ``with``) to free it.
    Scripts that construct one need an ``if __name__ == "__main__":`` guard, because vLLM
    spawns its engine processes.

    Seeds: prompt ``i`` is sampled with ``seed=seeds[i]``; vLLM gives the ``k``-th of the
    ``n`` samples the seed ``seeds[i] + k``. Callers must therefore space the seeds of
    different prompts at least ``n`` apart, or prompts share sample seeds (equal prompts then
    get equal samples, and different prompts correlated ones).
    """

    speed_options = frozenset({"gpu_memory_utilization", "kv_cache_space_gb", "max_num_seqs", "swap_space"})

    def __init__(self, model: str, **options: Any):
        import torch
        from vllm import LLM

        defaults = GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
        self.model = model
        self.options = {**defaults, **options}
        if self.options.get("enable_chunked_prefill") is False and "max_num_batched_tokens" not in options:
            # Without chunking, vLLM requires one step to fit a whole max_model_len prompt.
            longest = self.options.get("max_model_len") or 0
            self.options["max_num_batched_tokens"] = max(_MIN_BATCHED_TOKENS, longest)
        self._llm = LLM(model=model, **self.options)
        self.concurrency = self._llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders a submit against the thread's end
        self._broken: BaseException | None = None  # why the thread ended, for batches submitted after
        self._thread_of_engine = threading.Thread(target=self._serve, name="vllm-engine", daemon=True)
        self._thread_of_engine.start()

    def _submit(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]) -> Future:
        """One ``Completion`` per prompt, in prompt order, when all of the batch's are done.

        The same (prompt, seed, sampling) gives the same texts from one engine, whatever else is
        in flight (measured on CPU, eager, with chunked prefill off). Temperature 0
        is greedy: vLLM refuses ``n > 1`` there, so one greedy answer is sampled and repeated
        ``n`` times. Chat prompts (``sampling.chat``) go through the model's chat template.
        With ``sampling.regex`` every answer is constrained to match it in full, unless
        ``max_tokens`` cuts it short (finish reason "length").

        A prompt that leaves no room for ``max_tokens`` in ``max_model_len`` (counted with the
        model's tokenizer) is refused for good and never sent; so is one vLLM rejects as a bad
        request, while the others are answered.
        """
        batch = _Batch(prompts, samplings, seeds)
        with self._lock:
            if self._broken is not None:
                batch.future.set_exception(self._broken)
            else:
                self._batches.put(batch)
        return batch.future

    def _serve(self) -> None:
        """The engine's thread: add each batch's requests as it arrives, step while any is unfinished."""
        owners: dict[str, tuple[_Batch, int]] = {}  # request id -> its batch and place in it
        batch = None
        try:
            while True:
                for batch in _arrived(self._batches, wait=not owners):  # idle: wait for a batch
                    if batch is None:
                        raise RuntimeError(f"{type(self).__name__} is closed; create a new engine.")
                    self._add(batch, owners)
                if owners:
                    if not self._llm.llm_engine.has_unfinished_requests():
                        raise RuntimeError(f"vLLM dropped {len(owners)} requests without answering them")
                    for output in self._llm.llm_engine.step():
                        if output.finished:
                            batch, i = owners.pop(output.request_id)
                            batch.answer(i, _completion(output, batch.samplings[i]))
        except BaseException as exc:  # noqa: BLE001 - closed, or cannot serve: every batch in it ends with this
            with self._lock:
                self._broken = exc
                waiting = [batch, *(b for b, _ in owners.values())]  # the one being added, too
                while not self._batches.empty():
                    waiting.append(self._batches.get())
            for unanswered in waiting:
                if unanswered is not None and not unanswered.future.done():
                    unanswered.future.set_exception(exc)

    def _add(self, batch: _Batch, owners: dict[str, tuple[_Batch, int]]) -> None:
        """Add a batch's requests to the engine, one by one so that one vLLM rejects (a bad
        request) is refused alone; refusals known before sending answer at once."""
        from vllm.exceptions import VLLMClientError

        for i, (prompt, sampling, seed) in enumerate(zip(batch.prompts, batch.samplings, batch.seeds)):
            refusal = self._too_long(prompt, sampling)
            if refusal is None:
                params = self._params(sampling, seed)
                try:
                    if sampling.chat:
                        [request_id] = self._llm.enqueue_chat([json.loads(prompt)], [params], use_tqdm=False)
                    else:
                        [request_id] = self._llm.enqueue([prompt], [params], use_tqdm=False)
                except VLLMClientError as exc:  # the request's fault
                    refusal = Completion.refusal(f"vLLM rejected the request: {exc}", permanent=True)
                else:  # outputs carry the id LLM gave (its counter), not the one enqueue returns ("<id>-<random>")
                    owners[request_id.split("-", 1)[0]] = (batch, i)
                    continue
            batch.answer(i, refusal)

    def _too_long(self, prompt: str, sampling: Sampling) -> Completion | None:
        """A permanent refusal when the prompt leaves less than ``max_tokens`` of the context."""
        context = self._llm.llm_engine.model_config.max_model_len
        n = _tokens_without_room(prompt, sampling, context, self._llm.get_tokenizer)
        if n is None:
            return None
        return Completion.refusal(
            f"a prompt of {n} tokens leaves {max(0, context - n)} of the model's {context}-token context "
            f"for an answer of up to {sampling.max_tokens} tokens; raise --engine-option max_model_len "
            "or shorten the window (window_size)",
            permanent=True,
        )

    @classmethod
    def check_fits(cls, model: str, options: dict, requests) -> None:
        """ConfigError when every prompt leaves too little of ``max_model_len`` for its answer,
        counted with the model's own tokenizer (loaded only if a prompt's bytes do not fit)."""
        context = options.get("max_model_len", GPU_DEFAULTS["max_model_len"])  # CPU's default is the same
        tokenizer = functools.cache(lambda: _tokenizer(model, options))
        fewest = None
        for prompt, sampling in requests:
            n = _tokens_without_room(prompt, sampling, context, tokenizer)
            if n is None:
                return
            fewest = n if fewest is None else min(fewest, n)
        raise NoWindowFits(
            f"no window fits the model's {context}-token context (max_model_len): the shortest prompt has "
            f"{fewest} tokens, before an answer of up to {sampling.max_tokens}; raise --engine-option "
            "max_model_len (up to what the model takes) or shorten the window (window_size)",
            shortest=fewest,
            room=context - sampling.max_tokens,
        )

    def _close(self) -> None:
        """Stop the engine's thread, shut the engine processes down and free their memory."""
        self._batches.put(None)
        self._thread_of_engine.join(timeout=30)  # a step hung in a dead engine must not hold close up
        llm, self._llm = self._llm, None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            shutdown()

    @staticmethod
    def _params(sampling: Sampling, seed: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(regex=sampling.regex) if sampling.regex else None
        return SamplingParams(
            n=1 if sampling.temperature == 0 else sampling.n,  # greedy: one answer, repeated
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=seed,
            structured_outputs=structured,
        )


def _tokens_without_room(prompt: str, sampling: Sampling, context: int, tokenizer) -> int | None:
    """The prompt's length in tokens when it leaves less than ``sampling.max_tokens`` of a
    ``context``-token window; None when it fits, or when it cannot be told (then vLLM decides,
    and a rejection is still caught per prompt). ``tokenizer()`` is called only when the
    prompt's bytes do not fit: a token covers at least a byte."""
    margin = _CHAT_TEMPLATE_TOKENS if sampling.chat else _SPECIAL_TOKENS
    if len(prompt.encode()) + margin + sampling.max_tokens <= context:
        return None
    n = _count_tokens(tokenizer(), prompt, sampling.chat)
    return None if n is None or n + sampling.max_tokens <= context else n


def _count_tokens(tokenizer, prompt: str, chat: bool) -> int | None:
    """The prompt's length in tokens as vLLM will send it; None without a usable tokenizer or chat template."""
    if tokenizer is None:
        return None
    if not chat:
        return len(tokenizer.encode(prompt))
    try:
        text = tokenizer.apply_chat_template(json.loads(prompt), tokenize=False, add_generation_prompt=True)
        return len(tokenizer.encode(text, add_special_tokens=False))
    except Exception:  # noqa: BLE001 - no usable chat template: vLLM reports that itself
        return None


def _tokenizer(model: str, options: dict):
    """The model's Hugging Face tokenizer as vLLM loads it (``tokenizer`` option, else the model's),
    or None when it cannot be loaded here (a GGUF file, no files): then the engine decides."""
    try:
        from transformers import AutoTokenizer

        source = options.get("tokenizer") or model
        return AutoTokenizer.from_pretrained(source, trust_remote_code=bool(options.get("trust_remote_code")))
    except Exception:  # noqa: BLE001 - any failure to load only skips a check the engine repeats per window
        return None


class _Batch:
    """A submitted batch: its requests, and its future, resolved when the last one is answered."""

    def __init__(self, prompts: list[str], samplings: list[Sampling], seeds: list[int]):
        self.prompts, self.samplings, self.seeds = prompts, samplings, seeds
        self.completions: list[Completion | None] = [None] * len(prompts)
        self.left = len(prompts)
        self.future: Future[list[Completion]] = Future()

    def answer(self, i: int, completion: Completion) -> None:
        self.completions[i] = completion
        self.left -= 1
        if not self.left:
            self.future.set_result(self.completions)


def _arrived(batches: queue.SimpleQueue, wait: bool):
    """The batches submitted since last asked, waiting for the first when ``wait``."""
    try:
        yield batches.get(block=wait)
        while True:
            yield batches.get_nowait()
    except queue.Empty:
        return


def _completion(output, sampling: Sampling) -> Completion:
    """A finished ``RequestOutput`` as a ``Completion``: its samples in order (a greedy one repeated ``n`` times)."""
    samples = sorted(output.outputs, key=lambda c: c.index)
    repeat = sampling.n if sampling.temperature == 0 else 1
    tokens = len(output.prompt_token_ids) if getattr(output, "prompt_token_ids", None) is not None else None
    return Completion.of([c.text for c in samples] * repeat, [c.finish_reason for c in samples] * repeat, tokens)
