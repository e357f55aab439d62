"""The dynamic batcher, on a stand-in pipeline that records its calls: what is gathered into one
call, what is answered alone, and that nothing a request does stops the worker."""

from __future__ import annotations

import threading
import time

import pytest

from odqa.api import FailedAnswer
from odqa.errors import EmptyQuestionError, OdqaError, PipelineConfigError
from odqa.serve.batching import MODEL_THREAD, Batcher, ModelThread


class FakeQA:
    """Answers ``q`` with ``("answer to q", {})``, an empty question with a FailedAnswer, a question
    holding "explode" with a RuntimeError for the whole call; ``hold`` keeps each call waiting
    until ``release``; ``calls`` records each call's (questions, batch_size, task)."""

    def __init__(self):
        self.calls: list[tuple[list[str], int, str | None]] = []
        self.threads: list[str] = []  # the thread each call ran on
        self.hold = False
        self.permits = threading.Semaphore(0)

    def ask_many_with_outputs(self, questions, batch_size=8, every_stage=True, task=None):
        assert every_stage is False
        self.calls.append((list(questions), batch_size, task))
        self.threads.append(threading.current_thread().name)
        if self.hold:
            assert self.permits.acquire(timeout=10), "the test never let this call through"
        if any("explode" in q for q in questions):
            raise RuntimeError("boom")
        if task == "unknown":
            raise PipelineConfigError("unknown task 'unknown'")
        return [FailedAnswer(q, EmptyQuestionError("the question is empty")) if not q.strip()
                else (f"answer to {q}" + (f" [{task}]" if task else ""), {}) for q in questions]

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


@pytest.fixture
def qa():
    return FakeQA()


@pytest.fixture
def make(qa):
    made = []

    def build(**kw) -> Batcher:
        batcher = Batcher(qa, name="fake", **kw).start()
        made.append(batcher)
        return batcher

    yield build
    qa.hold = False
    qa.release(100)
    for batcher in made:
        batcher.close(timeout=5)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def answers(job, timeout: float = 5.0):
    return [r if isinstance(r, (Exception, FailedAnswer)) else r[0] for r in job.future.result(timeout)]


def test_requests_that_wait_together_are_answered_in_one_call(qa, make):
    batcher = make(max_batch_size=8, max_wait_ms=5)
    qa.hold = True
    first = batcher.submit(["q0"])
    wait_for(lambda: len(qa.calls) == 1)  # the worker is busy with q0; the next ones queue up
    jobs = [batcher.submit([f"q{i}"]) for i in range(1, 6)]
    qa.release(2)
    assert answers(first) == ["answer to q0"]
    assert [answers(j) for j in jobs] == [[f"answer to q{i}"] for i in range(1, 6)]
    assert qa.calls == [(["q0"], 1, None), ([f"q{i}" for i in range(1, 6)], 5, None)]
    assert batcher.sizes == {1: 1, 5: 1} and batcher.batches == 2


def test_a_batch_holds_at_most_max_batch_size_questions(qa, make):
    batcher = make(max_batch_size=3, max_wait_ms=50)
    job = batcher.submit([f"q{i}" for i in range(7)])  # one request's questions are split over batches too
    assert answers(job) == [f"answer to q{i}" for i in range(7)]
    assert [len(c[0]) for c in qa.calls] == [3, 3, 1]


def test_the_first_question_waits_max_wait_ms_for_company(qa, make):
    batcher = make(max_batch_size=8, max_wait_ms=300)
    a = batcher.submit(["a"])
    time.sleep(0.05)
    b = batcher.submit(["b"])  # arrives within the wait: joins a's batch
    assert answers(a) == ["answer to a"] and answers(b) == ["answer to b"]
    assert qa.calls == [(["a", "b"], 2, None)]


def test_max_batch_size_1_answers_each_question_alone(qa, make):
    batcher = make(max_batch_size=1, max_wait_ms=300)
    qa.hold = True
    jobs = [batcher.submit([f"q{i}"]) for i in range(4)]
    qa.release(4)
    assert [answers(j) for j in jobs] == [[f"answer to q{i}"] for i in range(4)]
    assert qa.calls == [([f"q{i}"], 1, None) for i in range(4)] and batcher.sizes == {1: 4}


def test_questions_with_a_task_are_answered_alone_and_in_order(qa, make):
    batcher = make(max_batch_size=8, max_wait_ms=5)
    qa.hold = True
    busy = batcher.submit(["first"])
    wait_for(lambda: len(qa.calls) == 1)
    plain1, tasked, plain2 = batcher.submit(["p1"]), batcher.submit(["t1", "t2"], task="topic"), batcher.submit(["p2"])
    qa.release(10)
    assert answers(busy) == ["answer to first"]
    assert answers(tasked) == ["answer to t1 [topic]", "answer to t2 [topic]"]
    assert answers(plain1) == ["answer to p1"] and answers(plain2) == ["answer to p2"]
    assert qa.calls[1:] == [(["p1", "p2"], 2, None), (["t1"], 1, "topic"), (["t2"], 1, "topic")]


def test_a_bad_question_gets_its_failed_answer_and_the_others_their_answers(qa, make):
    batcher = make(max_batch_size=8, max_wait_ms=5)
    got = answers(batcher.submit(["a", " ", "b"]))
    assert got[0] == "answer to a" and got[2] == "answer to b"
    assert isinstance(got[1], FailedAnswer) and str(got[1].error) == "the question is empty"


def test_an_error_in_a_batch_is_retried_alone_so_only_its_question_fails(qa, make):
    batcher = make(max_batch_size=8, max_wait_ms=5)
    qa.hold = True
    busy = batcher.submit(["first"])
    wait_for(lambda: len(qa.calls) == 1)
    bad, good = batcher.submit(["explode"]), batcher.submit(["fine"])
    qa.release(10)
    assert answers(busy) == ["answer to first"] and answers(good) == ["answer to fine"]
    [error] = answers(bad)
    assert isinstance(error, RuntimeError) and str(error) == "boom"
    assert [c[0] for c in qa.calls] == [["first"], ["explode", "fine"], ["explode"], ["fine"]]
    assert answers(batcher.submit(["after"])) == ["answer to after"]  # the worker goes on


def test_an_unknown_task_comes_back_as_the_questions_error(qa, make):
    batcher = make()
    [error] = answers(batcher.submit(["x"], task="unknown"))
    assert isinstance(error, PipelineConfigError) and "unknown task" in str(error)


def two_behind_a_busy_batch(qa, make):
    """A batcher whose first batch (``first``) is held running, and two requests queued behind it:
    ``(batcher, busy, left, stays)``."""
    batcher = make(max_batch_size=8, max_wait_ms=5)
    qa.hold = True
    busy = batcher.submit(["first"])
    wait_for(lambda: len(qa.calls) == 1)
    return batcher, busy, batcher.submit(["left"]), batcher.submit(["stays"])


def test_an_abandoned_request_is_dropped_before_its_batch_runs(qa, make):
    batcher, busy, left, stays = two_behind_a_busy_batch(qa, make)
    left.abandon()
    qa.release(10)
    assert answers(stays) == ["answer to stays"] and answers(busy) == ["answer to first"]
    assert left.future.cancelled()
    assert [c[0] for c in qa.calls] == [["first"], ["stays"]]


def test_a_request_abandoned_while_its_batch_runs_does_not_break_the_batch(qa, make):
    batcher, busy, left, stays = two_behind_a_busy_batch(qa, make)
    qa.release()
    wait_for(lambda: len(qa.calls) == 2)  # the batch [left, stays] is running
    left.abandon()
    qa.release(10)
    assert answers(busy) == ["answer to first"] and answers(stays) == ["answer to stays"]
    assert answers(batcher.submit(["after"])) == ["answer to after"]


def test_an_empty_request_is_answered_at_once(make):
    assert make().submit([]).future.result(1) == []


def test_close_answers_what_is_queued_then_refuses_more(qa, make):
    batcher = make(max_batch_size=2, max_wait_ms=5)
    jobs = [batcher.submit([f"q{i}"]) for i in range(5)]
    batcher.close()
    assert [answers(j, timeout=0) for j in jobs] == [[f"answer to q{i}"] for i in range(5)]
    with pytest.raises(OdqaError, match="shutting down"):
        batcher.submit(["late"])


@pytest.mark.parametrize("settings, fragment", [({"max_batch_size": 0}, "max_batch_size must be at least 1"),
                                                ({"max_wait_ms": -1}, "max_wait_ms must be 0 or more")])
def test_bad_settings(qa, settings, fragment):
    with pytest.raises(OdqaError, match=fragment):
        Batcher(qa, **settings)


def test_every_pipelines_calls_run_on_the_one_model_thread(qa):
    other = FakeQA()
    batchers = [Batcher(qa, name="a").start(), Batcher(other, name="b").start()]
    try:
        assert answers(batchers[0].submit(["q"])) == ["answer to q"]
        assert answers(batchers[1].submit(["r"])) == ["answer to r"]
    finally:
        for batcher in batchers:
            batcher.close(timeout=5)
    assert qa.threads == other.threads == [MODEL_THREAD.name]  # not the batchers' own workers


def test_the_model_thread_runs_calls_in_order_and_hands_back_their_errors():
    thread, order = ModelThread("test-model"), []
    futures = [thread.submit(order.append, i) for i in range(5)]
    assert [f.result(5) for f in futures] == [None] * 5 and order == list(range(5))
    with pytest.raises(ZeroDivisionError):
        thread.run(lambda: 1 / 0)
    assert thread.run(lambda: thread.run(lambda: "nested")) == "nested"  # a call from the thread itself runs at once
