"""The behaviour every engine owes sigray, as one suite each engine's test module subclasses
(the way zarr's ``StoreTests`` is subclassed per store): ``engine`` is the fixture to provide."""

from __future__ import annotations

import pytest

from sigray.engines.base import Completion, Engine, Sampling

SERIES_PROMPTS = ["12,15,18,21,24", "100,98,97,95,94,92", "5,5,5,5,5,5,5,5", "7,1,7,1,7,1", "3000,3100,3050,3200"]
FREE = Sampling(n=1, temperature=1.0, max_tokens=12)


def each(sampling: Sampling, prompts: list) -> list[Sampling]:
    return [sampling] * len(prompts)


def texts_of(completions: list[Completion]) -> list[list[str]]:
    return [c.texts for c in completions]


def spaced_seeds(count: int, n: int = 1, base: int = 1000) -> list[int]:
    return [base + i * n for i in range(count)]


class EngineContract:
    """Subclass with an ``engine`` fixture (module-scoped: engines are slow to start)."""

    def test_is_an_engine(self, engine):
        assert isinstance(engine, Engine)

    def test_n_samples_give_n_texts_per_prompt_in_prompt_order(self, engine):
        samplings = [Sampling(n=k, temperature=1.0, max_tokens=8) for k in (1, 3, 2)]
        completions = engine.generate(SERIES_PROMPTS[:3], samplings, spaced_seeds(3, n=3))
        assert all(isinstance(c, Completion) and not c.refused for c in completions)
        assert [len(c.texts) for c in completions] == [1, 3, 2]
        assert [len(c.finish_reasons) for c in completions] == [1, 3, 2]
        assert all(isinstance(t, str) for c in completions for t in c.texts)

    def test_an_answer_stopped_by_its_token_limit_is_never_said_to_have_ended(self, engine):
        cut = Sampling(n=2, temperature=1.0, max_tokens=1)
        completions = engine.generate(SERIES_PROMPTS[:2], each(cut, SERIES_PROMPTS[:2]), spaced_seeds(2, n=2))
        # "length", or None from an engine that does not say; "stop" only for an answer that
        # ended (at once, with an end-of-sequence token) before the limit.
        assert all(r in ("length", None) for c in completions for t, r in zip(c.texts, c.finish_reasons) if t)

    def test_the_same_seed_gives_the_same_texts_across_calls(self, engine):
        seeds = spaced_seeds(len(SERIES_PROMPTS))
        first = engine.generate(SERIES_PROMPTS, each(FREE, SERIES_PROMPTS), seeds)
        assert engine.generate(SERIES_PROMPTS, each(FREE, SERIES_PROMPTS), seeds) == first

    def test_the_same_seed_gives_the_same_texts_in_another_batch_composition(self, engine):
        sampling = Sampling(n=2, temperature=1.0, max_tokens=16)
        seeds = spaced_seeds(len(SERIES_PROMPTS), n=2)
        whole = engine.generate(SERIES_PROMPTS, each(sampling, SERIES_PROMPTS), seeds)
        # Reversed, interleaved with unrelated prompts, and alone: same texts for each (prompt, seed).
        others = ["1,2,3", "hello world", "900,800,700,600"]
        mixed_prompts = [p for pair in zip(SERIES_PROMPTS[::-1], others * 2) for p in pair]
        mixed_seeds = [s for pair in zip(seeds[::-1], [7, 8, 9] * 2) for s in pair]
        mixed = engine.generate(mixed_prompts, each(sampling, mixed_prompts), mixed_seeds)
        assert mixed[0::2] == whole[::-1]
        assert engine.generate(SERIES_PROMPTS[2:3], [sampling], seeds[2:3]) == whole[2:3]

    def test_batches_in_flight_together_each_get_the_texts_they_get_alone(self, engine):
        """What lets a worker keep several batches in the engine: none changes another's answers."""
        sampling = Sampling(n=2, temperature=1.0, max_tokens=16)
        batches = [SERIES_PROMPTS[:2], SERIES_PROMPTS[2:], SERIES_PROMPTS[1:4]]
        seeds = [spaced_seeds(len(b), n=2, base=100 * k) for k, b in enumerate(batches)]
        futures = [engine.submit(b, each(sampling, b), s) for b, s in zip(batches, seeds)]
        together = [future.result(timeout=300) for future in futures]
        assert together == [engine.generate(b, each(sampling, b), s) for b, s in zip(batches, seeds)]

    def test_submit_checks_its_arguments_before_it_returns(self, engine):
        with pytest.raises(ValueError, match="one sampling and one seed per prompt"):
            engine.submit(SERIES_PROMPTS[:2], [FREE], [1, 2])
        assert engine.submit([], [], []).result() == []

    def test_different_seeds_give_different_texts(self, engine):
        prompts = [SERIES_PROMPTS[1]] * 4
        texts = texts_of(engine.generate(prompts, each(FREE, prompts), [1, 2, 3, 4]))
        assert len({answers[0] for answers in texts}) > 1

    def test_prompt_tokens_when_counted_are_the_prompts_length_in_tokens(self, engine):
        prompts = ["1,2", ",".join(str(v) for v in range(100, 160))]
        short, long = engine.generate(prompts, each(FREE, prompts), [1, 2])
        if short.prompt_tokens is None and long.prompt_tokens is None:
            return  # an engine that does not count them (sigray then reports none)
        assert 0 < short.prompt_tokens < long.prompt_tokens <= len(prompts[1]) + 2  # a BOS token or two

    def test_an_empty_batch_gives_an_empty_list(self, engine):
        assert engine.generate([], [], []) == []

    @pytest.mark.parametrize("counts", [(2, 1, 2), (2, 2, 1), (1, 2, 2)])
    def test_prompts_samplings_and_seeds_must_pair_up(self, engine, counts):
        prompts, samplings, seeds = counts
        with pytest.raises(ValueError, match="one sampling and one seed per prompt"):
            engine.generate(SERIES_PROMPTS[:prompts], [FREE] * samplings, [1] * seeds)


class ClosingContract:
    """What closing means, for engines cheap enough to build per test (``make_engine`` fixture)."""

    def test_a_closed_engine_refuses_work_and_closes_twice(self, make_engine):
        engine = make_engine()
        engine.close()
        engine.close()
        with pytest.raises(RuntimeError, match="closed"):
            engine.generate(SERIES_PROMPTS[:1], [FREE], [1])

    def test_closing_with_a_batch_in_flight_does_not_wait_forever(self, make_engine):
        engine = make_engine()
        engine.submit(SERIES_PROMPTS, each(FREE, SERIES_PROMPTS), spaced_seeds(len(SERIES_PROMPTS)))
        engine.close()  # returns (the batch may be answered, cancelled or fail: the worker is going away)
