"""Run STOCK sigllm on a signal, with recorded LLM answers replayed in place of the model.

This script runs in the stock sigllm environment (numpy<2, pandas<2, sigllm's own pins)
built by ``sigray.testing.stock_sigllm.ensure_stock_env``. It imports stock packages only,
never sigray, which is not installed there. It does what a sigllm user does:

    data = orion.data.load_signal(csv)
    events = sigllm.SigLLM(pipeline, hyperparameters=...).detect(data[, normal=...])

The pipeline and every sigllm primitive run unchanged, LLM primitives included: their
prompt building, token bookkeeping and response handling (``[RESPONSE]`` splitting,
chat choices) are stock code. Only the model libraries they import are test doubles,
installed in ``sys.modules`` before sigllm loads:

* ``transformers`` / ``torch``: a tokenizer that counts one token per character and
  records the text each window sends, and a model whose ``generate`` returns the recorded
  answers (decoded alone, or after the prompt when sigllm decodes prompt and answer
  together);
* ``openai`` / ``tiktoken``: a client that records each chat request (as the JSON list
  of its messages, sigray's chat prompt form) or completion prompt, and answers with
  the recorded texts.

MLBlocks finds sigllm's, Orion's and ml-stars' JSON folders through the same entry points,
resolved without ``pkg_resources``' re-check of each package's full requirement tree
(which demands torch, tensorflow and transformers, left out of this environment).

Usage: python -I stock_replay.py REQUEST_JSON OUT_JSON
       python -I stock_replay.py --check       (loads mistral_detector; exits 0 when usable)
REQUEST_JSON holds ``pipeline``, ``signal_csv``, ``answers``, ``hyperparameters`` and,
for one-shot prompters, ``normal_csv``. OUT_JSON receives ``anomalies`` (start, end,
severity rows), ``prompts`` (what each window sent the model, in order) and ``llm_calls``
(passes over the windows); or, when the stock run raises, ``error`` with the exception's
type, message and traceback (and the script exits 1).
"""

import json
import sys
import traceback
import types


class Replay:
    """The recorded answers, served window by window, and the prompts that asked for them."""

    answers = []  # list[list[str]], one list of sampled texts per window
    prompts = []  # what each window sent, in order
    passes = 0

    @classmethod
    def answer(cls, prompt, samples):
        position = len(cls.prompts) % max(len(cls.answers), 1)
        if position == 0:
            cls.passes += 1
        cls.prompts.append(prompt)
        if position >= len(cls.answers):
            raise RuntimeError(f"replay: stock sigllm asked about window {position}, only {len(cls.answers)} recorded")
        texts = list(cls.answers[position])
        if samples is not None and samples != len(texts):
            raise RuntimeError(f"replay: stock sigllm asked for {samples} samples, {len(texts)} recorded")
        return texts


# -- transformers / torch ----------------------------------------------------------


class _Ids:
    """Token ids as far as sigllm looks at them: a shape, slicing, and what they decode to."""

    def __init__(self, prompt, answers=None, sliced=False):
        self.prompt, self.answers, self.sliced = prompt, answers, sliced
        self.shape = (1, len(prompt))

    def __getitem__(self, key):
        return _Ids(self.prompt, self.answers, sliced=True)  # generate_ids[:, input_length:]

    def decoded(self):
        return list(self.answers) if self.sliced else [self.prompt + a for a in self.answers]


class _Inputs(dict):
    def to(self, device):
        return self


class FakeTokenizer:
    """A test double: one token per character; records nothing itself (the model does)."""

    eos_token = bos_token = unk_token = pad_token = None
    pad_token_id = 0

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        return cls()

    def add_special_tokens(self, tokens):
        for key, value in tokens.items():
            setattr(self, key, value)

    def convert_tokens_to_ids(self, token):
        return 0

    def __len__(self):
        return 1

    def encode(self, text):
        return list(str(text))

    def __call__(self, text, return_tensors=None):
        text = text[0] if isinstance(text, list) else text
        return _Inputs(input_ids=_Ids(str(text)))

    def batch_decode(self, ids, **kwargs):
        return ids.decoded()


class FakeModel:
    """A test double: ``generate`` answers with the recorded texts of the next window."""

    generation_config = types.SimpleNamespace(pad_token_id=None)

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        return cls()

    def eval(self):
        return self

    def generate(self, input_ids, num_return_sequences=None, **kwargs):
        answers = Replay.answer(input_ids.prompt, num_return_sequences)
        return _Ids(input_ids.prompt, answers)


# -- openai / tiktoken -----------------------------------------------------------------


def _choices(texts):
    return types.SimpleNamespace(
        choices=[types.SimpleNamespace(message=types.SimpleNamespace(content=t), text=t, logprobs=None) for t in texts]
    )


class _ChatCompletions:
    def create(self, model=None, messages=None, n=None, **kwargs):
        return _choices(Replay.answer(json.dumps(messages), n))


class FakeOpenAI:
    """A test double for ``openai.OpenAI``: chat requests answered from the recording."""

    def __init__(self, **kwargs):
        self.chat = types.SimpleNamespace(completions=_ChatCompletions())


class _Completion:
    @staticmethod
    def create(model=None, prompt=None, n=None, **kwargs):
        return _choices(Replay.answer(prompt, n))


class _Encoding:
    def encode(self, text):
        return list(str(text))


def install_fake_model_libraries():
    modules = {
        "torch": {"float16": "float16"},
        "transformers": {"AutoTokenizer": FakeTokenizer, "AutoModelForCausalLM": FakeModel},
        "openai": {"OpenAI": FakeOpenAI, "Completion": _Completion},
        "tiktoken": {"encoding_for_model": lambda name: _Encoding()},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


# -- running -------------------------------------------------------------------------


def _load_entry_points(entry_point_name, entry_point_group="mlblocks"):
    """mlblocks.discovery._load_entry_points, with ``resolve()`` for ``load()`` (no requirement check)."""
    import pkg_resources

    lookup_paths = []
    for entry_point in pkg_resources.iter_entry_points(entry_point_group):
        if entry_point.name == entry_point_name:
            paths = entry_point.resolve()
            if isinstance(paths, str):
                lookup_paths.append(paths)
            elif isinstance(paths, (list, tuple)):
                lookup_paths.extend(paths)
    return lookup_paths


def _prepare():
    install_fake_model_libraries()
    import mlblocks.discovery

    mlblocks.discovery._load_entry_points = _load_entry_points


def _pipeline(pipeline):
    if pipeline.endswith(".json"):
        with open(pipeline) as f:
            return json.load(f)
    return pipeline


def _run(request):
    from orion.data import load_signal
    from sigllm import SigLLM

    Replay.answers = [list(a) for a in request["answers"]]
    data = load_signal(request["signal_csv"])
    kwargs = {}
    if request.get("normal_csv"):
        # Stock one-shot pipelines aggregate the reference by a column named normal_timestamp.
        kwargs["normal"] = load_signal(request["normal_csv"]).rename(columns={"timestamp": "normal_timestamp"})
    sigllm = SigLLM(_pipeline(request["pipeline"]), hyperparameters=request.get("hyperparameters") or None)
    events = sigllm.detect(data, **kwargs)
    return {
        "anomalies": {
            "start": [int(v) for v in events["start"]],
            "end": [int(v) for v in events["end"]],
            "severity": [float(v) for v in events["severity"]],
        },
        "prompts": Replay.prompts,
        "llm_calls": Replay.passes,
    }


def main(argv):
    _prepare()
    if argv == ["--check"]:
        from mlblocks import MLPipeline
        from mlblocks.discovery import load_pipeline

        MLPipeline(load_pipeline("mistral_detector"))
        return 0
    request_path, out_path = argv
    with open(request_path) as f:
        request = json.load(f)
    try:
        result, status = _run(request), 0
    except Exception as exc:  # noqa: BLE001 - reported to the caller, whatever stock sigllm raised
        result = {
            "error": {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()},
            "llm_calls": Replay.passes,
        }
        status = 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
