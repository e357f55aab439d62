"""The hayhooks wrapper, deployed into a real hayhooks server: its app served by uvicorn on 127.0.0.1
in a thread, the template directory deployed over HTTP as ``hayhooks pipeline deploy-files`` does.

The pipeline is the tiny test one (random models): the answers must be the ones
``odqa.load(...).ask`` gives, never good ones.
"""

from __future__ import annotations

import ast
import importlib
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "pipelines" / "hayhooks" / "odqa_ask"
NAME = "odqa_ask"
QUESTIONS = ["Who wrote Romeo and Juliet?", "What is the capital of Australia?"]


# --- without hayhooks ------------------------------------------------------------------------
def test_only_the_wrapper_imports_hayhooks():
    importers = []
    for path in sorted((REPO / "odqa").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "hayhooks" or n.startswith("hayhooks.") for n in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["odqa/serve/hayhooks_wrapper.py"]


def test_the_wrapper_names_the_extra_when_hayhooks_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "hayhooks", None)  # import hayhooks -> ImportError
    monkeypatch.delitem(sys.modules, "odqa.serve.hayhooks_wrapper", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'odqa\[hayhooks\]'"):
        importlib.import_module("odqa.serve.hayhooks_wrapper")


def test_the_template_refuses_the_name_odqa():
    source = (TEMPLATE / "pipeline_wrapper.py").read_text(encoding="utf-8")
    with pytest.raises(ImportError, match="do not name a hayhooks deployment 'odqa'"):
        exec(compile(source, "pipeline_wrapper.py", "exec"), {"__name__": "odqa.pipeline_wrapper",
                                                              "__package__": "odqa"})


# --- deployed in a hayhooks server -------------------------------------------------------------
@pytest.fixture(scope="module")
def hayhooks_server(tmp_path_factory, pipeline_yaml):
    """A hayhooks server on a free 127.0.0.1 port with the template deployed as ``odqa_ask``
    (serving ``pipeline_yaml``); yields its URL."""
    pytest.importorskip("hayhooks", reason="hayhooks is not installed (pip install 'odqa[hayhooks]')")
    import httpx
    import uvicorn
    from hayhooks.server.pipelines.registry import registry
    from hayhooks.server.utils.deploy_utils import read_pipeline_files_from_dir
    from hayhooks.settings import settings

    from odqa.cli.serve import listen

    mp = pytest.MonkeyPatch()
    mp.setenv("ODQA_PIPELINE", str(pipeline_yaml))
    # an empty pipelines dir (nothing deployed at start), and no dashboard credential under ~/.cache
    mp.setattr(settings, "pipelines_dir", str(tmp_path_factory.mktemp("hayhooks_pipelines")))
    mp.setattr(settings, "tracing_enabled", False)
    mp.setattr(settings, "monitoring_enabled", False)
    from hayhooks import create_app

    # hayhooks routes these stdlib loggers through loguru for good; give them back to the other tests after
    saved = {name: (lg.handlers[:], lg.level, lg.propagate)
             for name in settings.intercepted_loggers for lg in [logging.getLogger(name)]}
    sock = listen("127.0.0.1", 0)
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the hayhooks server did not start in 30 s"
            time.sleep(0.05)
        files = read_pipeline_files_from_dir(TEMPLATE)  # what `hayhooks pipeline deploy-files` sends
        deployed = httpx.post(url + "/deploy_files", json={"name": NAME, "files": files, "save_files": False},
                              timeout=60)
        assert deployed.status_code == 200, deployed.text
        yield url
    finally:
        wrapper = registry.get(NAME)
        if wrapper is not None:
            httpx.post(f"{url}/undeploy/{NAME}", timeout=30)
            wrapper.batcher.close()
        server.should_exit = True
        thread.join(15)
        sock.close()
        mp.undo()
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


@pytest.fixture(scope="module")
def expected(pipeline_yaml):
    import odqa

    qa = odqa.load(str(pipeline_yaml))
    return {q: qa.ask(q) for q in QUESTIONS}


def test_run_answers_as_odqa_does(hayhooks_server, expected, pipeline_yaml):
    import httpx

    for question in QUESTIONS:
        response = httpx.post(f"{hayhooks_server}/{NAME}/run", json={"question": question}, timeout=30)
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        want = expected[question]
        assert result["answer"] == want.answer
        assert result["score"] == pytest.approx(want.score)
        assert result["question"] == question
        assert result["pipeline"] == Path(pipeline_yaml).stem
        assert [p["title"] for p in result["passages"]] == [p.title for p in want.passages]
        assert result["passages"] and result["passages"][0]["title"]
        assert set(result) >= {"score", "dropped_ids", "timings", "meta"}  # the whole of /v1/ask's answer


def test_run_refuses_a_bad_question(hayhooks_server):
    import httpx

    empty = httpx.post(f"{hayhooks_server}/{NAME}/run", json={"question": "   "}, timeout=30)
    assert empty.status_code == 422, empty.text
    assert "question" in empty.json()["detail"]
    missing = httpx.post(f"{hayhooks_server}/{NAME}/run", json={}, timeout=30)
    assert missing.status_code == 422


def test_chat_completion_replies_with_the_answer(hayhooks_server, expected):
    import httpx

    question = QUESTIONS[1]
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": question}]
    response = httpx.post(f"{hayhooks_server}/v1/chat/completions", json={"model": NAME, "messages": messages},
                          timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == expected[question].answer

    parts = [{"role": "user", "content": [{"type": "text", "text": question}]}]  # OpenAI content parts
    response = httpx.post(f"{hayhooks_server}/v1/chat/completions", json={"model": NAME, "messages": parts},
                          timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == expected[question].answer


def test_models_lists_the_deployment(hayhooks_server):
    import httpx

    response = httpx.get(f"{hayhooks_server}/v1/models", timeout=30)
    assert response.status_code == 200, response.text
    assert NAME in [m["id"] for m in response.json()["data"]]


def test_concurrent_requests_are_batched_and_answered_alike(hayhooks_server, expected):
    import httpx
    from hayhooks.server.pipelines.registry import registry

    batcher = registry.get(NAME).batcher
    before = sum(batcher.sizes.values())
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda q: httpx.post(f"{hayhooks_server}/{NAME}/run", json={"question": q},
                                                       timeout=30), QUESTIONS * 4))
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert [r.json()["result"]["answer"] for r in responses] == [expected[q].answer for q in QUESTIONS * 4]
    assert sum(batcher.sizes.values()) > before  # answered through odqa serve's batcher


def test_responses_api_replies_with_the_answer(hayhooks_server, expected):
    import httpx

    question = QUESTIONS[0]
    response = httpx.post(f"{hayhooks_server}/v1/responses", json={"model": NAME, "input": question}, timeout=30)
    assert response.status_code == 200, response.text
    [message] = [item for item in response.json()["output"] if item.get("type") == "message"]
    assert [part["text"] for part in message["content"]] == [expected[question].answer]
