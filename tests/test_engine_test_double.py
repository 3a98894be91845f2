"""The test double keeps the engine contract, so what tests prove with it holds for real engines."""

from __future__ import annotations

import pytest

from sigray.engines import Completion, Sampling, load_engine
from sigray.engines.test_double import TestDoubleEngine
from tests.engine_contract import ClosingContract, EngineContract


@pytest.fixture(scope="module")
def engine():
    return TestDoubleEngine()


@pytest.fixture
def make_engine():
    return TestDoubleEngine


class TestTheTestDouble(EngineContract, ClosingContract):
    """The engine contract, on the test double."""


class _UsersEngine:
    """A user's engine written without sigray's base class (a test double)."""

    def __init__(self, model: str):
        self.closed = False

    def generate(self, prompts, samplings, seeds):
        return [[f",{seed}"] * sampling.n for sampling, seed in zip(samplings, seeds)]

    def close(self):
        self.closed = True


class TestAUsersEngineByImportPath(EngineContract, ClosingContract):
    """A ``module:Class`` engine that does not derive from Engine is held to the same contract."""

    @pytest.fixture
    def engine(self):
        return load_engine("tests.test_engine_test_double:_UsersEngine", "", {})

    @pytest.fixture
    def make_engine(self):
        return lambda: load_engine("tests.test_engine_test_double:_UsersEngine", "", {})


def test_the_test_double_refuses_a_prompt_that_fills_its_context_and_cuts_answers_to_the_room_left():
    engine = TestDoubleEngine(context_chars=40)
    fits, tight, too_long = "1,2,3,4,5", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15", "9," * 20
    sampling = Sampling(n=2, max_tokens=12)
    completions = engine.generate([fits, tight, too_long], [sampling] * 3, [1, 3, 5])
    assert [c.finish_reasons for c in completions[:1]] == [["stop", "stop"]]
    assert completions[1].finish_reasons == ["length", "length"]
    assert all(len(t) == 40 - len(tight) for t in completions[1].texts)
    assert completions[2].permanent and "context of 40" in completions[2].refused and completions[2].texts == []


def test_plain_texts_from_a_users_engine_have_no_finish_reason():
    engine = load_engine("tests.test_engine_test_double:_UsersEngine", "", {})
    (completion,) = engine.generate(["1,2"], [Sampling(n=2)], [7])
    assert completion == Completion([",7", ",7"], [None, None])
