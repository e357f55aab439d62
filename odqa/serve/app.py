"""The HTTP server's app: several pipelines in one process, on one copy of each backbone.

    >>> from odqa.serve.app import create_app, name_pipelines
    >>> app = create_app(name_pipelines(["pipelines/frozen_reader.yml", "pipelines/frozen_reader_bm25.yml"]))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)   (or: odqa serve PIPELINE.yml ...)

Endpoints (every error is ``{"error": message}`` with its status):

- ``POST /v1/ask`` ``{"question", "pipeline"?, "task"?}``: the answer (``Answer.to_dict()``, what
  ``odqa ask --json`` prints) plus ``"pipeline"``;
- ``POST /v1/ask_many`` ``{"questions": [...], "pipeline"?, "task"?}``: ``{"pipeline", "answers"}``,
  a bad question's entry ``{"question", "error", "error_type", "status"}`` in its place;
- ``GET /v1/pipelines``: each pipeline's file, components, backbone, artifacts (with the sha256 of
  each ``manifest.json``) and batching counters;
- ``GET /healthz``: 200 while the process is up; ``GET /readyz``: 503 until every pipeline is
  loaded and warm, then 200;
- ``GET /``: the web page (``odqa/serve/static/``: ask, see the answer, the passages read with the
  answer highlighted, and the timings), its files under ``/static/``;
- ``GET /openapi.json``, the API's spec, and ``GET /docs``, FastAPI's Swagger page, which loads its
  script and style from a CDN: offline, read ``/openapi.json``.

A pipeline is named by its file's stem; the first is the default, and a request names another by
name only, never by path. Pipeline files are read when the app is made (so a bad file fails at
once); their models load and warm up in a thread once the server runs, while ``/readyz`` says 503.
Each pipeline has a :class:`~odqa.serve.batching.Batcher`. Backbones are shared by
:func:`odqa.lm.backbone.load_backbone`'s process-wide cache.

Safe defaults: an API key, when set, is needed by every endpoint but the two probes and the web
page's files, which hold no data (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; the page asks
for the key and sends it); bodies over ``max_body_bytes`` get 413;
requests beyond ``max_concurrency`` in flight get 503 with ``Retry-After``. FastAPI's own
OpenTelemetry hooks are off; Haystack's telemetry is off when ``HAYSTACK_TELEMETRY_ENABLED=False``
was set before Haystack was imported (``odqa serve`` sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import odqa
from odqa.api import FailedAnswer
from odqa.errors import BadQuestionError, OdqaError, PipelineConfigError
from odqa.serve.batching import MODEL_THREAD, Batcher

logger = logging.getLogger(__name__)

PROBES = ("/healthz", "/readyz")  # open without a key, never refused as busy
STATIC = Path(__file__).parent / "static"  # the web page, shipped as package data
PAGE, PAGE_FILES = "/", "/static/"  # open without a key: the page and its files hold no data
RETRY_AFTER_S = 1
CLIENT_CLOSED = 499  # nginx's status for a request whose client left; logged, never delivered
ASK_SHAPE = '{"question": "...", "pipeline": optional name, "task": optional task}'
ASK_MANY_SHAPE = '{"questions": ["...", ...], "pipeline": optional name, "task": optional task}'


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and any ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- pipelines ------------------------------------------------------------------------------
def name_pipelines(paths: list[str | Path]) -> dict[str, Path]:
    """Name each pipeline file by its stem (``pipelines/frozen_reader.yml`` -> ``frozen_reader``), in order."""
    named: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.stem in named:
            raise PipelineConfigError(f"two pipelines are named '{path.stem}' ({named[path.stem]} and {path}); "
                                      "the server names each by its file name, so rename one of the files")
        named[path.stem] = path
    return named


def _manifest(value: Any) -> Path | None:
    """``VALUE/manifest.json`` when an init parameter names a directory holding one, else ``None``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        manifest = Path(value) / "manifest.json"
        return manifest if manifest.is_file() else None
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a directory
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(name: str, path: Path, qa) -> dict[str, Any]:
    """What ``GET /v1/pipelines`` says of one pipeline: its file, each component's type, the reader's
    backbone, and every init parameter naming a directory with a ``manifest.json`` (a soft prompt, a
    re-ranker, an index) with that manifest's sha256."""
    components = qa.pipeline.to_dict()["components"]
    artifacts = []
    for component, spec in components.items():
        for parameter, value in (spec.get("init_parameters") or {}).items():
            manifest = _manifest(value)
            if manifest is not None:
                artifacts.append({"component": component, "parameter": parameter, "path": value,
                                  "manifest_sha256": _sha256(manifest)})
    return {
        "name": name,
        "file": str(path.resolve()),
        "components": {component: spec["type"] for component, spec in components.items()},
        "backbone": (components[qa.reader].get("init_parameters") or {}).get("model"),
        "artifacts": artifacts,
    }


class Service:
    """The server's pipelines: read at once, warmed up in a thread by :meth:`start`, each with a batcher."""

    def __init__(self, pipelines: dict[str, str | Path], *, max_batch_size: int = 8, max_wait_ms: float = 5):
        if not pipelines:
            raise PipelineConfigError("name at least one pipeline to serve, e.g. pipelines/frozen_reader.yml")
        self.files = {name: Path(path) for name, path in pipelines.items()}
        self.default = next(iter(self.files))
        self.qas = {name: odqa.load(str(path)) for name, path in self.files.items()}  # config errors raise here
        self.info = {name: describe(name, self.files[name], qa) for name, qa in self.qas.items()}
        self.batchers = {name: Batcher(qa, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, name=name)
                         for name, qa in self.qas.items()}
        self.ready = threading.Event()  # every pipeline warm, every batcher running
        self.settled = threading.Event()  # ready, or failed
        self.failed: Exception | None = None
        self.in_flight = 0  # requests being answered (counted on the event loop's thread)
        self._closing = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Warm every pipeline up in a background thread; :attr:`ready` is set when all are warm."""
        threading.Thread(target=self._warm_up, name="odqa-serve-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        name = self.default
        try:
            for name, qa in self.qas.items():
                start = time.perf_counter()
                MODEL_THREAD.run(qa.warm_up)  # where every model call runs: weights and caches in one heap arena
                logger.info("pipeline '%s' is warm (%.1f s)", name, time.perf_counter() - start)
            with self._lock:
                if self._closing:
                    return
                for batcher in self.batchers.values():
                    batcher.start()
                self.ready.set()
            logger.info("ready: %s", ", ".join(self.files))
        except Exception as e:  # noqa: BLE001 - recorded for /readyz and the CLI, never raised in a thread
            first_line = (str(e).splitlines() or [""])[0]
            self.failed = e if isinstance(e, OdqaError) else OdqaError(f"unexpected {type(e).__name__}: {first_line}")
            logger.error("pipeline '%s' could not be loaded: %s", name, e,
                         exc_info=None if isinstance(e, OdqaError) else e)
        finally:
            self.settled.set()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            started = self.ready.is_set()
        if started:
            for batcher in self.batchers.values():
                batcher.close()

    def batcher(self, pipeline: str | None) -> Batcher:
        """The batcher of the named pipeline (the default when ``None``), once the server is ready."""
        name = self.default if pipeline is None else pipeline
        if name not in self.batchers:
            raise ApiError(404, f"unknown pipeline {name[:100]!r}; this server has {list(self.files)} (name one by "
                                "its file's stem, not its path; GET /v1/pipelines lists them)")
        if not self.ready.is_set():
            raise ApiError(503, self.not_ready(), {"Retry-After": str(RETRY_AFTER_S)})
        return self.batchers[name]

    def not_ready(self) -> str:
        if self.failed is not None:
            return f"a pipeline failed to load, so the server cannot answer: {self.failed}"
        return "the server is still loading its pipelines; retry when GET /readyz answers 200"


# --- the request's guards: plain ASGI middleware, outermost first ---------------------------------
class RequireKey:
    """401 for a request without the API key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``),
    except the probes and the web page's files."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._open(scope["path"]) or self._given(scope):
            return await self.app(scope, receive, send)
        await error_response(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY' or "
                                  "'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"})(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in PROBES or path == PAGE or path.startswith(PAGE_FILES)

    def _given(self, scope) -> bool:
        headers = dict(scope["headers"])  # lower-case names, as ASGI gives them
        bearer = headers.get(b"authorization", b"")
        scheme, _, token = bearer.partition(b" ")
        candidates = [headers.get(b"x-api-key"), token.strip() if scheme.lower() == b"bearer" else None]
        return any(c is not None and hmac.compare_digest(c, self.key) for c in candidates)


class LimitConcurrency:
    """503 with ``Retry-After`` for a request beyond ``limit`` in flight (the probes are not counted)."""

    def __init__(self, app, service: Service, limit: int):
        self.app, self.service, self.limit = app, service, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        if self.service.in_flight >= self.limit:
            await error_response(503, f"the server is busy: {self.service.in_flight} requests in flight, its limit "
                                      f"(--max-concurrency {self.limit}); retry after {RETRY_AFTER_S} s",
                                 {"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)
            return
        self.service.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.service.in_flight -= 1


class LimitBody:
    """413 for a body over ``limit`` bytes: by its ``Content-Length`` before reading it, else by the
    bytes that arrive. The body is read here, then handed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self, size: str) -> JSONResponse:
        return error_response(413, f"the request body is {size}, over this server's limit of {self.limit:,} bytes "
                                   "(--max-body-bytes); send fewer or shorter questions per request")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._too_large(f"{int(length):,} bytes")(scope, receive, send)
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(f"over {self.limit:,} bytes")(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the connection's own messages: http.disconnect when the client leaves

        await self.app(scope, replay, send)


# --- request bodies -------------------------------------------------------------------------
PIPELINE_HELP = "A loaded pipeline's name (GET /v1/pipelines); the default one if left out"


class AskRequest(BaseModel):
    """One question."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="The question, e.g. 'Who wrote Hamlet?'")
    pipeline: str | None = Field(None, description=PIPELINE_HELP)
    task: str | None = Field(None, description="Multitask pipelines only: TASK or TASK/TEMPLATE")


class AskManyRequest(BaseModel):
    """Several questions, answered in order; a bad one gets an error in its place."""

    model_config = ConfigDict(extra="forbid")
    questions: list[str] = Field(description="The questions, in order")
    pipeline: str | None = Field(None, description=PIPELINE_HELP)
    task: str | None = Field(None, description="Multitask pipelines only: TASK or TASK/TEMPLATE")


def _validation_message(exc: RequestValidationError, shape: str) -> tuple[int, str]:
    """``(status, message)`` for a body FastAPI could not read: 400 for malformed JSON, else 422."""
    problems = []
    for error in exc.errors():
        where = [str(part) for part in error.get("loc", ())[1:]]  # drop the leading "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "invalid JSON")
            return 400, f"malformed JSON in the request body (character {where[0] if where else '?'}: {detail}); " \
                        f"send a JSON object: {shape}"
        if not where:
            if kind == "missing":
                return 422, f"the request has no body; send a JSON object: {shape}"
            return 422, f"the request body must be a JSON object sent with 'Content-Type: application/json': {shape}"
        field = ".".join(where)
        if kind == "missing":
            problems.append(f"'{field}' is missing")
        elif kind == "extra_forbidden":
            problems.append(f"'{field}' is not a field of this request")
        else:
            shown = json.dumps(error.get("input"), default=str)
            problems.append(f"'{field}': {error.get('msg', 'invalid')}, got {shown[:80]}")
    return 422, f"invalid request body: {'; '.join(problems)}; the body is {shape}"


# --- answering ------------------------------------------------------------------------------
async def _until_disconnected(receive) -> None:
    """Returns when the client has gone (the body is already read, so the next message says so)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _results(request: Request, batcher: Batcher, questions: list[str], task: str | None) -> list[Any] | None:
    """The batcher's results for ``questions``, or ``None`` if the client left first (its job is dropped)."""
    try:
        job = batcher.submit(questions, task)
    except OdqaError as e:
        raise ApiError(503, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
    answer = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer.done():
        return answer.result()
    job.abandon()
    answer.cancel()
    logger.info("pipeline '%s': the client left before its answer; dropped it", batcher.name)
    return None


def _raise_for(error: Exception, pipeline: str, task: str | None) -> None:
    """An exception a question raised, as the request's error: an unknown task 404, odqa's other
    errors 500 with their message, anything else 500 with its type only (the log has the traceback)."""
    if isinstance(error, BadQuestionError):
        raise ApiError(422, str(error))
    if isinstance(error, PipelineConfigError) and task is not None:
        raise ApiError(404, str(error))
    logger.error("pipeline '%s' failed on a question: %s", pipeline, error, exc_info=error)
    if isinstance(error, OdqaError):
        raise ApiError(500, str(error))
    raise ApiError(500, f"unexpected {type(error).__name__} while answering; the server's log has the details")


def _one_answer(result, pipeline: str, task: str | None):
    """One question's result as ``(Answer, outputs)``, or the :class:`ApiError` a request gets for it:
    422 for a bad question, else :func:`_raise_for`'s status."""
    if isinstance(result, Exception):
        _raise_for(result, pipeline, task)
    if isinstance(result, FailedAnswer):
        raise ApiError(422, str(result.error))
    return result


def _answer_json(result, pipeline: str) -> dict[str, Any]:
    answer, _outputs = result
    return {**answer.to_dict(), "pipeline": pipeline}


def _failed_json(result: FailedAnswer) -> dict[str, Any]:
    return {**result.to_dict(), "status": 422}


def _routes(app: FastAPI, service: Service) -> None:
    @app.get(PAGE, summary="The web page: ask a question, see the answer, its passages and timings",
             include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html")

    app.mount(PAGE_FILES.rstrip("/"), StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="200 while the process is up")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz", summary="200 once every pipeline is loaded and warm, else 503")
    async def readyz() -> Response:
        if service.ready.is_set():
            return JSONResponse({"ready": True, "pipelines": list(service.files)})
        return JSONResponse({"ready": False, "error": service.not_ready()}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/v1/pipelines", summary="The loaded pipelines: file, components, backbone, artifacts")
    async def pipelines() -> list[dict]:
        return [{**info, "default": name == service.default,
                 "batching": {"max_batch_size": service.batchers[name].max_batch_size,
                              "max_wait_ms": service.batchers[name].max_wait_ms,
                              "batches": service.batchers[name].batches,
                              "waiting": service.batchers[name].waiting}}
                for name, info in service.info.items()]

    @app.post("/v1/ask", summary="Answer one question")
    async def ask(body: AskRequest, request: Request) -> Response:
        batcher = service.batcher(body.pipeline)
        results = await _results(request, batcher, [body.question], body.task)
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        [result] = results
        return JSONResponse(_answer_json(_one_answer(result, batcher.name, body.task), batcher.name))

    @app.post("/v1/ask_many", summary="Answer several questions; a bad one gets an error in its place")
    async def ask_many(body: AskManyRequest, request: Request) -> Response:
        batcher = service.batcher(body.pipeline)
        results = await _results(request, batcher, body.questions, body.task)
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        for result in results:
            if isinstance(result, Exception):
                _raise_for(result, batcher.name, body.task)
        return JSONResponse({"pipeline": batcher.name, "answers": [
            _failed_json(r) if isinstance(r, FailedAnswer) else _answer_json(r, batcher.name) for r in results]})


def _error_handlers(app: FastAPI) -> None:
    shapes = {"/v1/ask": ASK_SHAPE, "/v1/ask_many": ASK_MANY_SHAPE}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        status, message = _validation_message(exc, shapes.get(request.url.path, "a JSON object"))
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = (f"no endpoint {request.method} {request.url.path[:100]}; the endpoints are POST /v1/ask, "
                       "POST /v1/ask_many, GET /v1/pipelines, GET /healthz, GET /readyz (see /openapi.json), and "
                       "GET /, the web page")
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:  # the server goes on serving
        logger.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return error_response(500, f"unexpected {type(exc).__name__}; the server's log has the details")


def create_app(pipelines: dict[str, str | Path], *, api_key: str | None = None, max_batch_size: int = 8,
               max_wait_ms: float = 5, max_body_bytes: int = 1_000_000, max_concurrency: int = 64) -> FastAPI:
    """The server's FastAPI app. Reads the pipeline files now (raising :class:`~odqa.errors.OdqaError`
    for a bad one); their models load and warm up when the app starts (its lifespan).

    :param pipelines: Name -> pipeline YAML, in order; the first is the default
        (:func:`name_pipelines` names files by their stems).
    :param api_key: When set, every endpoint but ``/healthz``, ``/readyz`` and the web page's files needs it.
    :param max_batch_size: Most questions of concurrent requests answered together; 1 turns batching off.
    :param max_wait_ms: How long the first waiting question waits for others to join its batch.
    :param max_body_bytes: Largest request body; bigger ones get 413.
    :param max_concurrency: Most requests in flight; more get 503 with ``Retry-After``.
    """
    for flag, value in (("max_body_bytes", max_body_bytes), ("max_concurrency", max_concurrency)):
        if value < 1:
            raise OdqaError(f"{flag} must be at least 1, got {value}")
    if api_key is not None and not api_key:
        raise OdqaError("the API key is empty; pass a key, or none to serve without one")
    service = Service(pipelines, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False, "auto_configure": False}
    app = FastAPI(title="odqa", version=odqa.__version__, lifespan=lifespan, telemetry=off,
                  description="Open-domain QA on a frozen language model. Pipelines: " + ", ".join(service.files))
    app.state.service = service
    _routes(app, service)
    _error_handlers(app)
    app.add_middleware(LimitBody, limit=max_body_bytes)  # the last added runs first
    app.add_middleware(LimitConcurrency, service=service, limit=max_concurrency)
    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)
    return app
