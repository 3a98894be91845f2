"""sigllm's LLM primitives, as sigray runs them: the exact text each would send.

Each sigllm LLM primitive wraps a window string in its own prompt (or sends it bare)
and calls a model. sigray stores that exact prompt per window and gives it to any
engine, so the model sees what it would have seen inside sigllm. The message texts
are read from sigllm's own JSON files, never copied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

FORECAST_HF = "sigllm.primitives.forecasting.huggingface.HF"
FORECAST_GPT = "sigllm.primitives.forecasting.gpt.GPT"
PROMPT_HF = "sigllm.primitives.prompting.huggingface.HF"
PROMPT_GPT = "sigllm.primitives.prompting.gpt.GPT"


def _messages(package: str, name: str) -> dict:
    with resources.files(package).joinpath(name).open() as f:
        return json.load(f)


def chat_prompt(system: str, user: str) -> str:
    """A chat request as sigray stores it: the JSON list of its messages."""
    return json.dumps([{"role": "system", "content": system}, {"role": "user", "content": user}])


@dataclass(frozen=True)
class LLMStep:
    """One sigllm LLM primitive: its family and how it turns a window into a prompt.

    GPT primitives send chat requests (system + user message) to OpenAI's chat API;
    sigray stores them as JSON message lists and engines apply the model's chat template.
    """

    primitive: str
    family: str  # "detector" or "prompter"

    def is_chat(self, params: dict) -> bool:
        if self.primitive == FORECAST_GPT:
            return bool(params.get("chat", True))
        return self.primitive == PROMPT_GPT

    def prompts(self, windows: list[str], params: dict, produce_args: dict) -> list[str]:
        sep = params.get("sep", ",")
        if self.primitive == FORECAST_HF:
            return list(windows)
        if self.primitive == FORECAST_GPT and not self.is_chat(params):
            return [" ".join([w, sep]) for w in windows]  # the completions API
        if self.primitive in (FORECAST_GPT, PROMPT_GPT):
            package = self.primitive.rsplit(".", 2)[0]
            name = "TEMPLATE.json" if self.primitive == FORECAST_GPT else "gpt_messages.json"
            messages = _messages(package, name)
            system, user = messages["system_message"], messages["user_message"]
            return [chat_prompt(system, " ".join([user, w, sep])) for w in windows]
        return _hf_prompter_prompts(windows, params, produce_args)


def _hf_prompter_prompts(windows: list[str], params: dict, produce_args: dict) -> list[str]:
    """sigllm's ``prompting.huggingface.HF.detect`` message, window by window; with several
    channels (``dim`` > 1) its multivariate message, which asks for index ranges."""
    messages = _messages("sigllm.primitives.prompting", "huggingface_messages.json")
    normal = produce_args.get("normal")
    one_shot = "" if normal is None else messages["one_shot_prefix"] + str(normal) + "\n\n"
    dim = int(produce_args.get("dim") or 1)
    user = messages["user_message"] if params.get("restrict_tokens") else messages["user_message_unrestricted"]

    def user_for(window: str) -> str:
        if dim == 1:
            return user
        examples = " ".join(f"({example})" for example in _examples(window))
        return messages["user_message_multivariate"].format(dim, examples)

    return [" ".join([messages["system_message"], one_shot, user_for(w), w, "[RESPONSE]"]) for w in windows]


def _examples(text: str, k: int = 3) -> list[str]:
    """sigllm's ``prompting.huggingface.get_examples``: the first ``k`` parenthesised parts.
    Restated, not imported: its module imports torch and transformers (seconds per process)
    for these two lines; the fidelity test compares the prompts with stock sigllm's."""
    return re.findall(r"\(([^)]*)\)", text)[:k]


LLM_STEPS = {
    FORECAST_HF: LLMStep(FORECAST_HF, "detector"),
    FORECAST_GPT: LLMStep(FORECAST_GPT, "detector"),
    PROMPT_HF: LLMStep(PROMPT_HF, "prompter"),
    PROMPT_GPT: LLMStep(PROMPT_GPT, "prompter"),
}
