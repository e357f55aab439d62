"""The web page of ``odqa serve`` in a real browser: headless Chromium driven by Playwright, against a
real uvicorn server (test_app's helper) with the tiny test pipeline.

The browser is the system's Chromium (Debian's ``chromium`` package), never a browser build of
Playwright's own, which would need a download. Without it, or without the ``playwright`` package,
every test here is skipped with the command that installs it.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from odqa.serve.app import create_app
from test_app import QUESTIONS, held_warm_up, running  # the real-server helpers, shared with the API's tests

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

INSTALL = ("install it with `apt-get install -y chromium` (Debian's Chromium) and "
           "`pip install playwright==1.65.2` (the dev extra); the test drives the system's Chromium, "
           "so `playwright install` is not needed")
WAIT_MS = 30_000  # the tiny pipeline answers in well under a second, but the CPUs may be shared
QUESTION = QUESTIONS[0]  # "Who wrote Romeo and Juliet?"


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip(f"the browser test needs the playwright package: {INSTALL}")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(f"the browser test needs Chromium (no `chromium` on PATH): {INSTALL}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh tab in its own context (so its own sessionStorage), failing the test on a script error."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert not errors, f"the page's script failed: {errors}"


@pytest.fixture(scope="module")
def server(pipeline_yaml):
    with running(create_app({"pipeline": pipeline_yaml, "second": pipeline_yaml})) as s:
        yield s


def ask_in_page(page, question: str) -> None:
    expect(page.locator("#ask")).to_be_enabled()
    page.fill("#question", question)
    page.press("#question", "Enter")


def test_the_page_waits_while_loading_then_shows_the_answer_its_passages_and_timings(page, pipeline_yaml):
    app, let_go = held_warm_up(pipeline_yaml)
    with running(app, ready=False) as s:
        r = httpx.get(s.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page.goto(s.url + "/")
        expect(page.locator("#status")).to_contain_text("loading")
        expect(page.locator("#ask")).to_be_disabled()
        let_go.set()
        ask_in_page(page, QUESTION)

        expected = s.post("/v1/ask", {"question": QUESTION}).json()
        expect(page.locator("#result")).to_be_visible()
        assert page.locator("#answer").text_content() == expected["answer"]  # exactly (here: empty)
        titles = page.locator("#passages .title")
        assert titles.all_text_contents() == [p["title"] for p in expected["passages"]]
        expect(titles.filter(has_text="Romeo and Juliet")).to_have_count(1)
        stages = page.locator("#timings tbody tr td:first-child").all_text_contents()
        assert stages == list(expected["timings"]) and "total" in stages
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#pipeline option")).to_have_text(["pipeline (default)"])


def test_an_empty_question_shows_the_apis_error(page, server):
    page.goto(server.url + "/")
    ask_in_page(page, "")
    expected = server.post("/v1/ask", {"question": ""})
    assert expected.status_code == 422
    expect(page.locator("#error")).to_have_text(expected.json()["error"])
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#ask")).to_be_enabled()  # the page goes on: ask again
    ask_in_page(page, QUESTION)
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()


def test_the_picker_lists_the_pipelines_and_the_page_asks_the_one_picked(page, server):
    page.goto(server.url + "/")
    picker = page.locator("#pipeline")
    expect(picker).to_have_value("pipeline")  # the default
    assert picker.locator("option").all_text_contents() == ["pipeline (default)", "second"]
    picker.select_option("second")
    with page.expect_request("**/v1/ask") as request:
        ask_in_page(page, QUESTION)
    assert json.loads(request.value.post_data) == {"question": QUESTION, "pipeline": "second"}
    expect(page.locator("#answer-meta")).to_contain_text("pipeline second")


def test_passages_are_text_with_the_answer_marked_never_markup(page, server):
    answer = {"question": "q", "answer": "shakespeare", "score": 0.5, "pipeline": "pipeline", "dropped_ids": [],
              "timings": {"bm25": 0.001, "total": 0.25}, "meta": {},
              "passages": [{"id": "p0", "title": "<b>Bold</b>", "score": 1.0,
                            "text": "By William Shakespeare <img src=x onerror=alert(1)> (SHAKESPEARE, 1597)."}]}
    page.route("**/v1/ask", lambda route: route.fulfill(json=answer))
    page.goto(server.url + "/")
    ask_in_page(page, "anything")
    expect(page.locator("#answer")).to_have_text("shakespeare")
    expect(page.locator("#passages .text mark")).to_have_text(["Shakespeare", "SHAKESPEARE"])
    expect(page.locator("#passages .text")).to_have_text(answer["passages"][0]["text"])
    expect(page.locator("#passages .title")).to_have_text("<b>Bold</b>")
    expect(page.locator("#passages img, #passages b")).to_have_count(0)
    expect(page.locator("#timings tbody tr")).to_have_text(["bm251.0", "total250.0"])


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_in_the_tab_only(page, pipeline_yaml):
    with running(create_app({"pipeline": pipeline_yaml}, api_key="s3cret")) as s:
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert s.get(path).status_code == 200, path  # the page holds no data: no key needed
        assert s.get("/static/nothing.js").status_code == 404
        assert s.get("/v1/pipelines").status_code == 401

        page.goto(s.url + "/")
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("needs an API key")
        page.fill("#api-key", "wrong")
        page.press("#api-key", "Enter")
        expect(page.locator("#status")).to_contain_text("refused")
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")
        expect(page.locator("#key-form")).to_be_hidden()
        with page.expect_request("**/v1/ask") as request:
            ask_in_page(page, QUESTION)
        assert request.value.headers["authorization"] == "Bearer s3cret"
        expect(page.locator("#result")).to_be_visible()
        expected = s.post("/v1/ask", {"question": QUESTION}, headers={"X-API-Key": "s3cret"}).json()
        assert page.locator("#answer").text_content() == expected["answer"]
        assert page.evaluate("sessionStorage.getItem('odqa-api-key')") == "s3cret"
        assert page.evaluate("localStorage.length") == 0
