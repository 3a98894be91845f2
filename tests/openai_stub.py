"""A test double of an OpenAI-compatible server (``vllm serve``'s API): it answers like the
test-double engine (so answers can be compared with an in-process run, bit for bit) and
fails on demand the ways servers do: 429 with ``Retry-After``, random 500s, 400 for a
prompt longer than its context, 401 for a wrong key.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from sigray.engines.base import Sampling
from sigray.engines.test_double import TestDoubleEngine


class OpenAIStubServer:
    """``with OpenAIStubServer(...) as stub:`` serves on ``stub.url`` (``http://127.0.0.1:PORT/v1``).

    ``throttle_first``: the first that many generation requests get 429 (``retry-after-ms``).
    ``error_rate``: that share of the other generation requests gets a 500 (seeded).
    ``context_chars``: prompts at least that long get vLLM's 400 for a too-long prompt.
    ``api_key``: requests without ``Authorization: Bearer <api_key>`` get 401.
    ``chat=False``: chat requests get vLLM's 400 for a model without a chat template;
    ``completions=False``: completion requests get OpenAI's 404 for a chat-only model;
    ``structured_outputs=False``: a request with that field gets OpenAI's 400 for an unknown argument.
    """

    def __init__(
        self,
        model: str = "stub-model",
        throttle_first: int = 0,
        error_rate: float = 0.0,
        context_chars: int | None = None,
        api_key: str | None = None,
        seed: int = 0,
        chat: bool = True,
        completions: bool = True,
        structured_outputs: bool = True,
    ):
        self.formats = {"chat": chat, "completions": completions, "structured_outputs": structured_outputs}
        self.model = model
        self.throttle_first = throttle_first
        self.error_rate = error_rate
        self.context_chars = context_chars
        self.api_key = api_key
        self.engine = TestDoubleEngine()
        self.counts = {"requests": 0, "throttled": 0, "errors": 0, "refused": 0, "answered": 0}
        self.arrivals: list[float] = []  # time.monotonic() of each generation request
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self, body: dict, prompt: str) -> tuple[int, dict, dict] | None:
        with self._lock:
            self.counts["requests"] += 1
            self.arrivals.append(time.monotonic())
            if self.counts["requests"] <= self.throttle_first:
                self.counts["throttled"] += 1
                return 429, {"retry-after-ms": "50"}, _error("Too many requests", "rate_limit_exceeded")
            if self._rng.random() < self.error_rate:
                self.counts["errors"] += 1
                return 500, {}, _error("the engine step failed", "internal_error")
            if self.context_chars is not None and len(prompt) >= self.context_chars:
                self.counts["refused"] += 1
                message = f"This model's maximum context length is {self.context_chars} tokens."
                return 400, {}, _error(message, "BadRequestError")
            self.counts["answered"] += 1
        return None

    def _answer(self, path: str, body: dict) -> tuple[int, dict, dict]:
        if body.get("model") != self.model:
            return 404, {}, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        chat = path.endswith("/chat/completions")
        if chat and not self.formats["chat"]:
            message = "default chat template is no longer allowed, so you must provide a chat template"
            return 400, {}, _error(message, "BadRequestError")
        if not chat and not self.formats["completions"]:
            message = "This is a chat model and not supported in the v1/completions endpoint."
            return 404, {}, _error(message, "invalid_request_error")
        if "structured_outputs" in body and not self.formats["structured_outputs"]:
            message = "Unrecognized request argument supplied: structured_outputs"
            return 400, {}, _error(message, "invalid_request_error")
        prompt = json.dumps(body["messages"]) if chat else body["prompt"]
        fault = self._fault(body, prompt)
        if fault is not None:
            return fault
        regex = (body.get("structured_outputs") or {}).get("regex")
        sampling = Sampling(body.get("n", 1), body["temperature"], body["top_p"], body["max_tokens"], regex, chat)
        (completion,) = self.engine.generate([prompt], [sampling], [body["seed"]])
        choices = []
        for k, (text, reason) in enumerate(zip(completion.texts, completion.finish_reasons)):
            content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
            choices.append({"index": k, "finish_reason": reason, **content})
        kind = "chat.completion" if chat else "text_completion"
        answered = sum(len(text) for text in completion.texts)
        usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": answered}
        usage["total_tokens"] = completion.prompt_tokens + answered
        created = int(time.time())
        return (
            200,
            {},
            {"id": "stub", "object": kind, "created": created, "model": self.model, "choices": choices, "usage": usage},
        )

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, headers: dict, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if stub.api_key is None or self.headers.get("Authorization") == f"Bearer {stub.api_key}":
                    return True
                self._send(401, {}, _error("Unauthorized", "invalid_api_key"))
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {}, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    self._send(404, {}, _error("not found", "NotFoundError"))

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(*stub._answer(self.path, body))

        return Handler


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": kind}}


def run_through(stub: OpenAIStubServer, signal: str, store: str, options: dict, **settings):
    """``sigray.run`` on ``signal`` with the openai engine asking ``stub`` (``options`` beside its URL)."""
    import sigray

    return sigray.run(
        [signal], store, engine="openai", model=stub.model, engine_options={"base_url": stub.url, **options}, **settings
    )
