"""Dynamic batching: one worker per pipeline gathers the questions of concurrent requests, and
one model thread for the whole process answers each gathered batch.

    >>> batcher = Batcher(odqa.load("pipelines/frozen_reader.yml"), max_batch_size=8, max_wait_ms=5)
    >>> batcher.start()
    >>> future = batcher.submit(["Who wrote Hamlet?"])   # from any thread; the event loop awaits it
    >>> [(answer, outputs)] = future.result()
    >>> batcher.close()

The worker takes the first waiting question, then gathers more for up to ``max_wait_ms`` after
that one arrived, or until it holds ``max_batch_size``, and answers them with one
``QA.ask_many_with_outputs(questions, batch_size=len(questions), every_stage=False)`` call, which
gives each question the answer it gets alone. Questions with a ``task`` (multitask pipelines) are
answered one at a time: the reader decodes those one by one anyway.

Every model call in the process runs on :data:`MODEL_THREAD`, one thread: pipelines share backbones
and tokenizers (a fast tokenizer must not be called from two threads at once), and on a CPU one call
already uses every core. One thread rather than a lock shared by the workers, because glibc gives
each thread that allocates its own heap arena, and memory freed in one arena serves only that
arena's later requests: with a worker per pipeline calling the models, each pipeline's
activations came from an arena of their own (``bench/serve_memory.py``; eval/RESULTS.md).

A request whose client went away is dropped before its batch runs (:meth:`Job.abandon`); once it
runs, it is answered like the others and the answer is thrown away. Nothing a request does stops
the worker: each question's error is handed back in its place (a
:class:`~odqa.api.FailedAnswer` for a bad question, the exception itself for anything else).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from odqa.errors import OdqaError

logger = logging.getLogger(__name__)


class ModelThread:
    """One daemon thread that runs the calls given to :meth:`submit` one after another, in order.

    A daemon, unlike a ``ThreadPoolExecutor``'s worker, so a server stopped during a long warm-up
    exits at once instead of finishing it first.
    """

    def __init__(self, name: str = "odqa-model"):
        self.name = name
        self._calls: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, fn, *args) -> Future:
        """Queue ``fn(*args)``; the future gives its result or raises its exception."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def run(self, fn, *args):
        """``fn(*args)`` on this thread, waited for (called from this thread itself, it just runs)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def _work(self) -> None:
        while True:
            future, fn, args = self._calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(e)


MODEL_THREAD = ModelThread()  # every model call of the process runs here (module docstring)


class Job:
    """The questions of one request; its :attr:`future` resolves to one result per question, in order:
    ``(Answer, outputs)``, a :class:`~odqa.api.FailedAnswer`, or the exception that question raised."""

    def __init__(self, questions: list[str], task: str | None):
        self.questions = list(questions)
        self.task = task
        self.future: Future = Future()
        self.results: list[Any] = [None] * len(self.questions)
        self.left = len(self.questions)
        self.gone = False
        if not self.questions:
            self.future.set_result([])

    def abandon(self) -> None:
        """The client went away: questions not yet in a batch are dropped (thread-safe)."""
        self.gone = True
        self.future.cancel()  # succeeds only while no batch has started on it

    def _settle(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)


@dataclass
class _Item:
    """One question of a job, as the worker's queue holds it."""

    job: Job
    index: int
    arrived: float = field(default_factory=time.monotonic)

    @property
    def question(self) -> str:
        return self.job.questions[self.index]


_STOP = object()


class Batcher:
    """Answers one pipeline's questions in batches gathered from concurrent requests (module docstring)."""

    def __init__(self, qa, *, max_batch_size: int = 8, max_wait_ms: float = 5, name: str = "pipeline",
                 model_thread: ModelThread = MODEL_THREAD):
        """
        :param qa: The loaded pipeline (:func:`odqa.load`), warm or not.
        :param max_batch_size: Most questions answered in one call; 1 answers each request's questions one by one.
        :param max_wait_ms: How long after the first waiting question the worker waits for others to join it.
        :param name: The pipeline's name, for the worker thread and the log.
        :param model_thread: Where every model call runs: the process's one model thread by default
            (module docstring).
        """
        if max_batch_size < 1:
            raise OdqaError(f"max_batch_size must be at least 1, got {max_batch_size}; use 1 to turn batching off")
        if max_wait_ms < 0:
            raise OdqaError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.qa = qa
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.name = name
        self.model_thread = model_thread
        self.sizes: Counter[int] = Counter()  # questions per model call -> how many calls
        self._queue: queue.Queue = queue.Queue()
        self._held: list = []  # taken from the queue while gathering, answered next (a task's questions)
        self._thread = threading.Thread(target=self._work, name=f"odqa-batcher-{name}", daemon=True)
        self._closed = False

    # --- the requests' side ------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def submit(self, questions: list[str], task: str | None = None) -> Job:
        """Queue a request's questions; returns its :class:`Job`, whose ``future`` gives the results."""
        if self._closed:
            raise OdqaError(f"pipeline '{self.name}' is shutting down; send the request to a running server")
        job = Job(questions, task)
        for index in range(len(job.questions)):
            self._queue.put(_Item(job, index))
        return job

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the worker (waiting up to ``timeout`` seconds)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def batches(self) -> int:
        """Model calls made so far."""
        return sum(self.sizes.values())

    @property
    def waiting(self) -> int:
        """Questions queued and not yet in a batch."""
        return self._queue.qsize() + len(self._held)

    # --- the worker's side -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._next(block=True)
            if first is _STOP:
                return
            try:
                batch = self._gather(first)
                if batch:
                    self._answer(batch)
            except Exception:  # noqa: BLE001 - a bug here must not end the worker and wedge the pipeline
                logger.exception("pipeline '%s': the batcher failed on a batch and goes on", self.name)

    def _next(self, block: bool, timeout: float | None = None):
        if self._held:
            return self._held.pop(0)
        return self._queue.get(block=block, timeout=timeout)

    def _gather(self, first) -> list[_Item]:
        """``first`` and the questions that join it: same pipeline, no task, within the wait, up to the size."""
        batch = [first] if self._wanted(first) else []
        if first.job.task is not None or self.max_batch_size == 1:
            return batch
        deadline = first.arrived + self.max_wait_ms / 1000
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP or item.job.task is not None:
                self._held.append(item)  # answered after this batch, in arrival order
                if item is _STOP:
                    break
            elif self._wanted(item):
                batch.append(item)
        return batch

    @staticmethod
    def _wanted(item: _Item) -> bool:
        return not item.job.gone and not item.job.future.cancelled()

    def _answer(self, batch: list[_Item]) -> None:
        jobs = {id(item.job): item.job for item in batch}.values()
        started = {id(job) for job in jobs if job.future.running() or job.future.set_running_or_notify_cancel()}
        batch = [item for item in batch if id(item.job) in started]  # a client that left just now is dropped
        if not batch:
            return
        results = self.model_thread.run(self._call, [item.question for item in batch], batch[0].job.task)
        for item, result in zip(batch, results):
            item.job._settle(item.index, result)

    def _call(self, questions: list[str], task: str | None) -> list[Any]:
        """One result per question (on the model thread); an exception that is no question's fault
        alone is retried one by one, so it fails only the questions that raise it again."""
        self.sizes[len(questions)] += 1
        try:
            return self.qa.ask_many_with_outputs(questions, batch_size=len(questions), every_stage=False, task=task)
        except Exception as e:  # noqa: BLE001 - handed back to the request(s), which log and answer 500
            if len(questions) == 1:
                return [e]
        return [self._call_alone(q, task) for q in questions]

    def _call_alone(self, question: str, task: str | None) -> Any:
        self.sizes[1] += 1
        try:
            return self.qa.ask_many_with_outputs([question], batch_size=1, every_stage=False, task=task)[0]
        except Exception as e:  # noqa: BLE001 - see _call
            return e
