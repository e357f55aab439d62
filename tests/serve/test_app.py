"""``odqa serve`` over real HTTP: a uvicorn server on 127.0.0.1 in a thread, talked to with httpx.

The pipelines are the tiny test ones (random models), so the assertions are about the answers
being the ones ``odqa.load(...).ask`` gives, statuses, messages and batching, never about quality.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

import odqa
from odqa.cli import main
from odqa.cli.serve import listen
from odqa.errors import IndexNotFoundError
from odqa.serve.app import create_app

QUESTIONS = ["Who wrote Romeo and Juliet?", "What is the capital of Australia?", "Who painted the Mona Lisa?",
             "Which planet is known as the Red Planet?", "Who discovered penicillin?", "Where is the Eiffel Tower?"]
LONG_QUESTION = "Who wrote " + "Romeo and Juliet and " * 300 + "?"
BODY_LIMIT = 20_000


# --- a real server in a thread ---------------------------------------------------------------
class Running:
    """A uvicorn server for ``app`` on a free 127.0.0.1 port, serving from a background thread."""

    def __init__(self, app):
        self.app = app
        self.service = app.state.service
        self.sock = listen("127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready: bool = True) -> "Running":
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30)
        if ready:
            assert self.service.ready.wait(60), self.service.not_ready()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
        assert not self.thread.is_alive()

    def post(self, path: str, body, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def batcher(self, name: str = "pipeline"):
        return self.service.batchers[name]


@contextlib.contextmanager
def running(app, ready: bool = True):
    server = Running(app).start(ready)
    try:
        yield server
    finally:
        server.stop()


def held_warm_up(pipeline_yaml) -> tuple:
    """An app on the tiny pipeline whose models stay loading until the returned event is set."""
    app = create_app({"pipeline": pipeline_yaml})
    qa = app.state.service.qas["pipeline"]
    warm, let_go = qa.warm_up, threading.Event()
    qa.warm_up = lambda: let_go.wait(30) and warm()  # loading stays unfinished until the test says
    return app, let_go


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def without_timings(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("timings", "score", "pipeline")}


class Gate:
    """Stands in a pipeline's ``ask_many_with_outputs`` (the real one still answers): records each
    call's questions; while ``closed``, each call waits for a permit; a question holding "explode"
    makes the call raise."""

    def __init__(self, qa):
        self.real = qa.ask_many_with_outputs
        self.calls: list[list[str]] = []
        self.closed = False
        self.permits = threading.Semaphore(0)
        qa.ask_many_with_outputs = self

    def __call__(self, questions, **kw):
        self.calls.append(list(questions))
        if self.closed:
            assert self.permits.acquire(timeout=30), "the test never let this call through"
        if any("explode" in q for q in questions):
            raise RuntimeError("boom")
        return self.real(questions, **kw)

    def open(self) -> None:
        self.closed = False
        self.permits.release(50)

    @contextlib.contextmanager
    def held(self):
        """Closed while the block runs, open after it (whatever happens in it)."""
        self.permits = threading.Semaphore(0)  # no permit left over from an earlier test
        self.closed = True
        try:
            yield self
        finally:
            self.open()


def raw_ask(server: Running, question: str) -> socket.socket:
    """Send ``POST /v1/ask`` on a plain socket and return it unread, for the test to close (a client leaving)."""
    body = json.dumps({"question": question}).encode()
    sock = socket.create_connection(server.sock.getsockname()[:2])
    sock.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def leave(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_yaml(tmp_path_factory, write_pipeline, soft_prompt_dir) -> Path:
    """Another pipeline on the same tiny backbone, with a soft prompt (an artifact with a manifest)."""
    return write_pipeline(tmp_path_factory.mktemp("second"), name="second.yml", soft_prompt=soft_prompt_dir)


@pytest.fixture(scope="module")
def alone(pipeline_yaml, second_yaml):
    """``alone(question, pipeline)``: ``odqa.load(...).ask(question).to_dict()``, the answer asked alone."""
    qas = {"pipeline": odqa.load(str(pipeline_yaml)), "second": odqa.load(str(second_yaml))}
    return lambda question, pipeline="pipeline": qas[pipeline].ask(question).to_dict()


@pytest.fixture(scope="module")
def server(pipeline_yaml, second_yaml):
    app = create_app({"pipeline": pipeline_yaml, "second": second_yaml}, max_batch_size=8, max_wait_ms=100,
                     max_body_bytes=BODY_LIMIT)
    with running(app) as s:
        yield s


@pytest.fixture(scope="module")
def gated(pipeline_yaml):
    """A server whose pipeline calls pass a :class:`Gate`, with room for 4 requests in flight."""
    app = create_app({"pipeline": pipeline_yaml}, max_batch_size=8, max_wait_ms=5, max_concurrency=4)
    gate = Gate(app.state.service.qas["pipeline"])
    with running(app) as s:
        s.gate = gate
        yield s
        gate.open()


@pytest.fixture
def gate(gated):
    gated.gate.calls.clear()
    yield gated.gate
    gated.gate.open()
    wait_for(lambda: gated.service.in_flight == 0)


def same_answer(got: dict, expected: dict) -> None:
    assert without_timings(got) == without_timings(expected)
    assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert set(got["timings"]) == set(expected["timings"])


# --- answers ---------------------------------------------------------------------------------
def test_ask_gives_the_answer_odqa_ask_gives(server, alone):
    r = server.post("/v1/ask", {"question": QUESTIONS[0]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    got = r.json()
    assert got["pipeline"] == "pipeline" and got["question"] == QUESTIONS[0]
    same_answer(got, alone(QUESTIONS[0]))


def test_ask_names_another_pipeline_on_the_same_backbone(server, alone):
    got = server.post("/v1/ask", {"question": QUESTIONS[1], "pipeline": "second"}).json()
    assert got["pipeline"] == "second"
    same_answer(got, alone(QUESTIONS[1], "second"))
    readers = [server.service.qas[name].pipeline.get_component("reader") for name in ("pipeline", "second")]
    assert readers[0] is not readers[1] and readers[0]._backbone is readers[1]._backbone  # one copy in memory


def test_ask_many_answers_around_a_bad_question(server, alone):
    r = server.post("/v1/ask_many", {"questions": [QUESTIONS[0], "", QUESTIONS[2]]})
    assert r.status_code == 200
    body = r.json()
    assert body["pipeline"] == "pipeline" and len(body["answers"]) == 3
    first, bad, third = body["answers"]
    same_answer(first, alone(QUESTIONS[0]))
    same_answer(third, alone(QUESTIONS[2]))
    assert bad["question"] == "" and bad["status"] == 422 and bad["error_type"] == "EmptyQuestionError"
    assert "empty" in bad["error"]


def test_pipelines_lists_files_components_backbone_and_artifacts(server, pipeline_yaml, second_yaml, tiny_lm,
                                                                flat_index, soft_prompt_dir):
    import hashlib

    r = server.get("/v1/pipelines")
    assert r.status_code == 200
    first, second = r.json()
    assert (first["name"], first["default"], second["name"], second["default"]) == ("pipeline", True, "second", False)
    assert first["file"] == str(pipeline_yaml.resolve()) and second["file"] == str(second_yaml.resolve())
    assert first["components"] == {
        "bm25": "odqa.components.retrievers.BM25Retriever", "dense": "odqa.components.retrievers.DenseRetriever",
        "join": "haystack.components.joiners.document_joiner.DocumentJoiner",
        "packer": "odqa.components.packing.ContextPacker", "reader": "odqa.components.readers.FrozenLMReader"}
    assert Path(first["backbone"]) == Path(tiny_lm).resolve() and second["backbone"] == first["backbone"]

    def sha(directory) -> str:
        return hashlib.sha256((Path(directory) / "manifest.json").read_bytes()).hexdigest()

    index = {("bm25", "index_dir"), ("dense", "index_dir")}
    assert {(a["component"], a["parameter"]) for a in first["artifacts"]} == index
    assert {(a["component"], a["parameter"]) for a in second["artifacts"]} == index | {
        ("packer", "soft_prompt"), ("reader", "soft_prompt")}
    for a in second["artifacts"]:
        directory = soft_prompt_dir if a["parameter"] == "soft_prompt" else flat_index
        assert Path(a["path"]) == Path(directory).resolve() and a["manifest_sha256"] == sha(directory)
    assert first["batching"]["max_batch_size"] == 8 and first["batching"]["max_wait_ms"] == 100


def test_probes_and_the_spec(server):
    assert server.get("/healthz").status_code == 200
    ready = server.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "pipelines": ["pipeline", "second"]}
    spec = server.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/ask_many", "/v1/pipelines", "/healthz", "/readyz"} <= set(spec["paths"])
    assert server.get("/docs").status_code == 200


def test_readyz_is_503_until_every_pipeline_is_warm(pipeline_yaml, alone):
    app, let_go = held_warm_up(pipeline_yaml)
    with running(app, ready=False) as s:
        assert s.get("/healthz").status_code == 200
        r = s.get("/readyz")
        assert r.status_code == 503 and "still loading" in r.json()["error"] and r.headers["retry-after"] == "1"
        r = s.post("/v1/ask", {"question": QUESTIONS[0]})
        assert r.status_code == 503 and "GET /readyz" in r.json()["error"]
        let_go.set()
        wait_for(lambda: s.get("/readyz").status_code == 200, timeout=30)
        same_answer(s.post("/v1/ask", {"question": QUESTIONS[0]}).json(), alone(QUESTIONS[0]))


def test_a_pipeline_that_cannot_warm_up_keeps_readyz_503_with_the_reason(pipeline_yaml):
    app = create_app({"pipeline": pipeline_yaml})

    def fail():
        raise IndexNotFoundError("index directory 'nowhere' does not exist; build it with: odqa index build")

    app.state.service.qas["pipeline"].warm_up = fail
    with running(app, ready=False) as s:
        assert s.service.settled.wait(30)
        r = s.get("/readyz")
        assert r.status_code == 503 and "index directory 'nowhere' does not exist" in r.json()["error"]
        r = s.post("/v1/ask", {"question": QUESTIONS[0]})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]


# --- batching --------------------------------------------------------------------------------
def _ask_together(server: Running, questions: list[str]) -> list[httpx.Response]:
    """Each question from its own thread, all sent at the same moment."""
    start = threading.Barrier(len(questions))

    def ask(question: str) -> httpx.Response:
        start.wait()
        return server.post("/v1/ask", {"question": question})

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(ask, questions))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, alone):
    batcher = server.batcher()
    before = batcher.sizes.copy()
    responses = _ask_together(server, QUESTIONS)
    assert [r.status_code for r in responses] == [200] * len(QUESTIONS)
    for question, r in zip(QUESTIONS, responses):
        same_answer(r.json(), alone(question))
    made = batcher.sizes - before
    assert sum(size * n for size, n in made.items()) == len(QUESTIONS)
    assert sum(made.values()) < len(QUESTIONS) and max(made) > 1


def test_max_batch_size_1_answers_one_request_at_a_time(pipeline_yaml, alone):
    with running(create_app({"pipeline": pipeline_yaml}, max_batch_size=1, max_wait_ms=100)) as s:
        responses = _ask_together(s, QUESTIONS)
        assert [r.status_code for r in responses] == [200] * len(QUESTIONS)
        for question, r in zip(QUESTIONS, responses):
            same_answer(r.json(), alone(question))
        assert s.batcher().sizes == {1: len(QUESTIONS)}


def test_a_client_that_leaves_breaks_neither_its_batch_nor_the_worker(gated, gate, alone):
    with ThreadPoolExecutor(4) as pool, gate.held():
        busy = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[0]})
        wait_for(lambda: len(gate.calls) == 1)  # the worker is held inside a call
        left_early = raw_ask(gated, QUESTIONS[1])
        stays = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[2]})
        left_late = raw_ask(gated, QUESTIONS[3])
        wait_for(lambda: gated.batcher().waiting == 3)
        leave(left_early)  # before its batch: dropped
        wait_for(lambda: gated.service.in_flight == 3)
        gate.permits.release()
        wait_for(lambda: len(gate.calls) == 2)
        assert sorted(gate.calls[1]) == sorted([QUESTIONS[2], QUESTIONS[3]])  # the one that left is not in it
        leave(left_late)  # while its batch runs: answered and thrown away
        wait_for(lambda: gated.service.in_flight == 1)  # the busy one answered, the one that left let go
        gate.open()
        assert busy.result().status_code == 200
        same_answer(stays.result().json(), alone(QUESTIONS[2]))
    after = gated.post("/v1/ask", {"question": QUESTIONS[4]})
    assert after.status_code == 200 and after.json()["question"] == QUESTIONS[4]


def test_a_client_that_times_out_leaves_the_others_their_answers(gated, gate, alone):
    with ThreadPoolExecutor(3) as pool, gate.held():
        busy = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[0]})
        wait_for(lambda: len(gate.calls) == 1)
        impatient = pool.submit(httpx.post, gated.url + "/v1/ask", json={"question": QUESTIONS[1]},
                                timeout=httpx.Timeout(10, read=0.2))
        with pytest.raises(httpx.ReadTimeout):
            impatient.result()
        others = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[3]})
        wait_for(lambda: gated.batcher().waiting == 2)  # both queued (the one that left is skipped later)
        wait_for(lambda: gated.service.in_flight == 2)  # and the one that left let go
        gate.open()
        assert busy.result().status_code == 200
        same_answer(others.result().json(), alone(QUESTIONS[3]))
    assert QUESTIONS[1] not in sum(gate.calls, [])


def test_an_unexpected_error_is_a_500_for_its_request_only(gated, gate, alone, caplog):
    with ThreadPoolExecutor(3) as pool, gate.held():
        busy = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[0]})
        wait_for(lambda: len(gate.calls) == 1)
        bad = pool.submit(gated.post, "/v1/ask", {"question": "Who will explode?"})
        good = pool.submit(gated.post, "/v1/ask", {"question": QUESTIONS[1]})
        wait_for(lambda: gated.batcher().waiting == 2)
        gate.open()
        assert busy.result().status_code == 200
        r = bad.result()
        assert r.status_code == 500
        assert r.json() == {"error": "unexpected RuntimeError while answering; the server's log has the details"}
        same_answer(good.result().json(), alone(QUESTIONS[1]))
    assert sorted(gate.calls[1]) == sorted(["Who will explode?", QUESTIONS[1]])  # one batch, then each alone
    assert sorted(gate.calls[2:]) == sorted([["Who will explode?"], [QUESTIONS[1]]])
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    assert gated.post("/v1/ask", {"question": QUESTIONS[2]}).status_code == 200


def test_requests_beyond_max_concurrency_get_503_with_retry_after(gated, gate):
    with ThreadPoolExecutor(4) as pool, gate.held():
        held = [pool.submit(gated.post, "/v1/ask", {"question": q}) for q in QUESTIONS[:4]]
        wait_for(lambda: gated.service.in_flight == 4)
        r = gated.post("/v1/ask", {"question": QUESTIONS[4]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"] and "--max-concurrency 4" in r.json()["error"]
        assert gated.get("/healthz").status_code == 200 and gated.get("/readyz").status_code == 200
        gate.open()
        assert [f.result().status_code for f in held] == [200] * 4


# --- bad requests ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, fragments", [
    ({"question": ""}, 422, ["the question is empty", "pass a non-empty question"]),
    ({"question": "   \n "}, 422, ["the question is empty"]),
    ({"question": LONG_QUESTION}, 422, ["shorten the question"]),
    ({"question": 5}, 422, ["'question': Input should be a valid string, got 5", '{"question": "..."']),
    ({"question": None}, 422, ["'question'", "valid string"]),
    ({}, 422, ["'question' is missing"]),
    ({"question": "Who?", "questions": ["x"]}, 422, ["'questions' is not a field of this request"]),
    ([QUESTIONS[0]], 422, ["must be a JSON object"]),
    ({"question": QUESTIONS[0], "pipeline": "nope"}, 404, ["unknown pipeline 'nope'", "['pipeline', 'second']"]),
    ({"question": QUESTIONS[0], "pipeline": "pipelines/frozen_reader.yml"}, 404, ["not its path"]),
    ({"question": QUESTIONS[0], "task": "topic"}, 404, ["takes no task (got task 'topic')"]),
])
def test_a_bad_ask_gets_its_status_and_a_message(server, body, status, fragments):
    r = server.post("/v1/ask", body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    for fragment in fragments:
        assert fragment in r.json()["error"]


@pytest.mark.parametrize("body, status, fragment", [
    ({"questions": "Who?"}, 422, "'questions': Input should be a valid list"),
    ({"questions": ["Who?", 3]}, 422, "'questions.1': Input should be a valid string"),
    ({"questions": [QUESTIONS[0]], "task": "topic"}, 404, "takes no task"),
    ({"questions": [QUESTIONS[0]], "pipeline": "nope"}, 404, "unknown pipeline 'nope'"),
])
def test_a_bad_ask_many_gets_its_status_and_a_message(server, body, status, fragment):
    r = server.post("/v1/ask_many", body)
    assert r.status_code == status and fragment in r.json()["error"]


def test_malformed_json_is_a_400(server):
    r = httpx.post(server.url + "/v1/ask", content=b'{"question": "Who', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("malformed JSON in the request body (character ")


def test_a_body_that_is_not_json_says_how_to_send_it(server):
    r = httpx.post(server.url + "/v1/ask", content=b'{"question": "Who?"}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "'Content-Type: application/json'" in r.json()["error"]


def test_a_body_over_the_limit_is_a_413_by_its_length(server):
    body = json.dumps({"question": "x" * BODY_LIMIT}).encode()
    r = httpx.post(server.url + "/v1/ask", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == (f"the request body is {len(body):,} bytes, over this server's limit of 20,000 bytes "
                                 "(--max-body-bytes); send fewer or shorter questions per request")


def test_a_body_over_the_limit_is_a_413_as_it_streams(server):
    def chunks():  # no Content-Length: sent chunked
        yield b'{"question": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(server.url + "/v1/ask", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 20,000 bytes" in r.json()["error"]
    assert server.post("/v1/ask", {"question": QUESTIONS[0]}).status_code == 200


def test_an_unknown_endpoint_is_a_json_404(server):
    r = server.get("/v1/answer")
    assert r.status_code == 404 and "no endpoint GET /v1/answer" in r.json()["error"]


def test_the_api_key(pipeline_yaml):
    with running(create_app({"pipeline": pipeline_yaml}, api_key="s3cret")) as s:
        ask = {"question": QUESTIONS[0]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"}):
            r = s.post("/v1/ask", ask, headers=headers)
            assert r.status_code == 401 and "missing or wrong API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert s.get("/v1/pipelines").status_code == 401 and s.get("/openapi.json").status_code == 401
        assert s.post("/v1/ask", ask, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert s.post("/v1/ask", ask, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert s.get("/healthz").status_code == 200 and s.get("/readyz").status_code == 200


# --- the command ------------------------------------------------------------------------------
def one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_serve_a_missing_pipeline_file(capsys, tmp_path):
    line = one_error_line(capsys, main(["serve", str(tmp_path / "missing.yml")]))
    assert "missing.yml' does not exist" in line


def test_serve_two_pipelines_with_one_name(capsys, tmp_path, pipeline_yaml):
    line = one_error_line(capsys, main(["serve", str(pipeline_yaml), str(pipeline_yaml)]))
    assert "two pipelines are named 'pipeline'" in line and "rename one" in line


def test_serve_on_a_port_in_use(capsys, pipeline_yaml):
    with contextlib.closing(listen("127.0.0.1", 0)) as taken:
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_error_line(capsys, main(["serve", str(pipeline_yaml), "--port", str(port)]))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "pick another --port" in line


@pytest.fixture
def cli_logging():
    """The command configures logging for its process (uvicorn's handlers on this test's captured
    stderr); put the loggers back as they were, so later servers log nowhere closed."""
    import logging

    names = ["uvicorn", "uvicorn.error", "uvicorn.access", "odqa"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_serve_stops_with_one_error_when_a_pipeline_cannot_warm_up(capsys, cli_logging, tmp_path, write_pipeline):
    path = write_pipeline(tmp_path, index_dir=tmp_path / "no-index")
    code = main(["serve", str(path), "--port", "0"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.out.startswith("serving pipeline (default: pipeline) on http://127.0.0.1:")
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no-index" in last


def test_the_serve_command_serves_until_interrupted(pipeline_yaml):
    env = {**os.environ, "ODQA_API_KEY": "k", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "odqa.cli", "serve", str(pipeline_yaml), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving pipeline (default: pipeline) on http://127.0.0.1:"), proc.stderr.read()
        url = line.split(" on ")[1].split(";")[0]
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, timeout=60)
        r = httpx.post(url + "/v1/ask", json={"question": QUESTIONS[0]}, headers={"X-API-Key": "k"}, timeout=30)
        assert r.status_code == 200 and r.json()["pipeline"] == "pipeline"
        assert httpx.post(url + "/v1/ask", json={"question": QUESTIONS[0]}).status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
