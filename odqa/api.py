"""The Python API: ``odqa.load(pipeline_yaml) -> QA``; ``QA.ask(q)`` / ``QA.ask_many(qs)``.

Pipeline files are Haystack YAML. Relative paths in them (``index_dir``,
``soft_prompt``, the recursive readers' ``first_prompt``/``second_prompt``/``recursion``, a
document store's ``path`` (Qdrant's local mode), and ``model``/``encoder`` values starting with
``./`` or ``../``) are resolved against the YAML file's own directory, so a pipeline runs from
any working directory; so are those of a component's nested objects (a retriever's
``document_store``).

A pipeline file is data, not code: it is checked before anything it names is imported. Files
over :data:`MAX_PIPELINE_BYTES`, YAML anchors and aliases (the "billion laughs" expansion) and
nesting deeper than :data:`MAX_YAML_DEPTH` are refused; every component ``type`` must match
:data:`ALLOWED_MODULES` as a string before its module is imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import importlib
import inspect
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from haystack import Pipeline, tracing
from haystack.dataclasses import GeneratedAnswer
from haystack.core.errors import PipelineRuntimeError

from odqa.components._common import check_question
from odqa.errors import (BadQuestionError, IndexError_, IndexNotFoundError, MalformedYAMLError, OdqaError,
                         PipelineConfigError, UnknownComponentError, UnsafePipelineError, from_os_error)

PATH_PARAMS = {"index_dir", "soft_prompt", "first_prompt", "second_prompt", "recursion", "artifact", "path"}
MAYBE_PATH_PARAMS = {"model", "encoder", "query_encoder"}
ALLOWED_MODULES = ("odqa", "haystack", "haystack_integrations")  # a type's module is one of these or inside one
# the same modules as Haystack's deserialization allowlist (``allowed_modules``): odqa's own string check
# runs first, on the file; Haystack's on every class it then imports
HAYSTACK_ALLOWED = tuple(f"{m}.*" for m in ALLOWED_MODULES)
MAX_PIPELINE_BYTES = 1 << 20
MAX_YAML_DEPTH = 64


@dataclass
class PassageRef:
    """A passage the reader read."""

    id: str
    title: str
    text: str
    score: float | None


@dataclass
class Answer:
    """What :meth:`QA.ask` returns."""

    question: str
    answer: str
    score: float
    passages: list[PassageRef]
    dropped_ids: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage, plus "total"
    meta: dict[str, Any] = field(default_factory=dict)

    ok = True  # an answer, not a :class:`FailedAnswer`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FailedAnswer:
    """What :meth:`QA.ask_many` gives in place of an :class:`Answer` for a question it could not
    answer (empty, too long, not text, ...); the other questions are answered as usual."""

    question: Any
    error: OdqaError

    ok = False

    def to_dict(self) -> dict[str, Any]:
        question = self.question if isinstance(self.question, str) else repr(self.question)
        return {"question": question, "error": str(self.error), "error_type": type(self.error).__name__}


# --- per-stage timing through Haystack's tracing hook -----------------------------------
_timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("odqa_timings", default=None)


class _Span(tracing.Span):
    def set_tag(self, key: str, value: Any) -> None:  # tags are not needed for timing
        pass


class _StageTimer(tracing.Tracer):
    """Records the wall time of each component run into the active ``_timings`` dict."""

    @contextlib.contextmanager
    def trace(self, operation_name: str, tags: dict[str, Any] | None = None, parent_span: tracing.Span | None = None):
        start = time.perf_counter()
        try:
            yield _Span()
        finally:
            record = _timings.get()
            if record is not None and operation_name == "haystack.component.run" and tags:
                name = tags.get("haystack.component.name", "?")
                record[name] = record.get(name, 0.0) + time.perf_counter() - start

    def current_span(self) -> tracing.Span | None:
        return None


_TIMER_INSTALLED = False


def _install_timer() -> None:
    global _TIMER_INSTALLED
    if not _TIMER_INSTALLED and not tracing.is_tracing_enabled():
        tracing.enable_tracing(_StageTimer())
    _TIMER_INSTALLED = True


# --- loading ------------------------------------------------------------------------------
def _resolve_paths(data: dict, base: Path) -> None:
    for comp in (data.get("components") or {}).values():
        _resolve_params(comp.get("init_parameters") or {}, base)


def _resolve_params(params: dict, base: Path) -> None:
    for key, value in list(params.items()):
        if isinstance(value, dict) and isinstance(value.get("init_parameters"), dict):  # e.g. a document store
            _resolve_params(value["init_parameters"], base)
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        if key in PATH_PARAMS or (key in MAYBE_PATH_PARAMS and value.startswith(("./", "../"))):
            params[key] = str((base / value).resolve())


def allowed_type(type_name: str) -> bool:
    """Whether a component type (``module.Class``) lies inside :data:`ALLOWED_MODULES`, judged on
    the string alone: nothing is imported to decide."""
    module = type_name.rpartition(".")[0]
    return any(fnmatch.fnmatchcase(module, root) or fnmatch.fnmatchcase(module, f"{root}.*")
               for root in ALLOWED_MODULES) and all(part.isidentifier() for part in type_name.split("."))


def _check_types(data: dict, source: str) -> None:
    for name, comp in data["components"].items():
        if not isinstance(comp, dict) or not isinstance(comp.get("type"), str):
            raise MalformedYAMLError(f"{source}: component '{name}' needs a 'type' (a dotted class path)")
        if not isinstance(comp.get("init_parameters", {}), (dict, type(None))):
            raise MalformedYAMLError(f"{source}: component '{name}': 'init_parameters' must be a mapping")
        named = [("has type", comp["type"], ". Use an odqa component (e.g. odqa.components.retrievers.BM25Retriever) "
                  "or a Haystack one")]
        named += [(f"{where} names type", t, "") for where, t in _nested_types(comp.get("init_parameters") or {},
                                                                                "init_parameters")]
        for what, type_name, fix in named:
            if not allowed_type(type_name):
                raise UnsafePipelineError(
                    f"{source}: component '{name}' {what} '{type_name[:200]}', outside the modules a pipeline may "
                    f"use ({', '.join(m + '.*' for m in ALLOWED_MODULES)}); nothing was imported{fix}")
        module, _, cls = comp["type"].rpartition(".")
        try:
            found = getattr(importlib.import_module(module), cls, None)
        except ImportError:
            found = None
        if not isinstance(found, type):
            integration = ("; it is a Haystack integration's: install its package (Qdrant's with "
                           "pip install -e '.[qdrant]')" if module.startswith("haystack_integrations.") else "")
            raise UnknownComponentError(
                f"{source}: component '{name}' has unknown type '{comp['type']}'{integration}; use an odqa "
                "component (e.g. odqa.components.retrievers.BM25Retriever) or an importable Haystack component"
            )


def _check_connections(connections, source: str) -> None:
    shape = "a list of {sender: COMPONENT.SOCKET, receiver: COMPONENT.SOCKET} mappings"
    if not isinstance(connections, list):
        raise MalformedYAMLError(f"{source}: 'connections' must be {shape}, got {type(connections).__name__}")
    for i, c in enumerate(connections):
        if not (isinstance(c, dict) and isinstance(c.get("sender"), str) and isinstance(c.get("receiver"), str)):
            raise MalformedYAMLError(f"{source}: connection {i + 1} is {str(c)[:80]!r}; 'connections' must be {shape}")


class _PipelineLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors, aliases and deep nesting as it composes: the
    check and the load are one pass, and nothing is expanded or nested past the limit."""

    source = "<pipeline>"
    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else "?"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise UnsafePipelineError(
                f"{self.source}: line {line}: YAML anchors and aliases ('&name' / '*name') are not allowed in a "
                "pipeline file; write each value out in full")
        nests = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        self._depth += nests
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise UnsafePipelineError(f"{self.source}: line {line}: nested more than {MAX_YAML_DEPTH} levels "
                                          "deep; a pipeline file is a flat mapping of components and connections")
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests


def _load_yaml(text: str, source: str):
    loader = _PipelineLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _nested_types(value, where: str):
    """Every dotted ``type`` inside a component's init parameters (Haystack deserializes those too)."""
    if isinstance(value, dict):
        if isinstance(value.get("type"), str) and "." in value["type"]:
            yield where, value["type"]
        for key, sub in value.items():
            yield from _nested_types(sub, f"{where}.{key}")
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _nested_types(sub, f"{where}[{i}]")


def _one_line(e: Exception) -> str:
    """An exception's whole message on one line. Haystack's deserialization errors dump the
    component's data over many lines before the cause; keep their first line and the cause."""
    text = str(e)
    head, sep, cause = text.partition("Original error:")
    if sep:
        text = head.strip().splitlines()[0].replace(" with the following data:", "").rstrip(":") + ": " + cause
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(e).__name__


def pipeline_from_dict(data: dict) -> Pipeline:
    """``Pipeline.from_dict`` with the modules a pipeline may use (:data:`HAYSTACK_ALLOWED`): the one
    way odqa builds a pipeline from data, whether from a file or a copy of a loaded one."""
    return Pipeline.from_dict(data, allowed_modules=list(HAYSTACK_ALLOWED))


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline YAML file into a Haystack :class:`Pipeline`, with odqa's checks and errors."""
    path = Path(path)
    if not path.is_file():
        raise PipelineConfigError(f"pipeline file '{path}' does not exist; see pipelines/ for the bundled ones")
    try:
        size = path.stat().st_size
        if size > MAX_PIPELINE_BYTES:
            raise UnsafePipelineError(f"{path}: {size:,} bytes, over the {MAX_PIPELINE_BYTES:,}-byte limit for a "
                                      "pipeline file; a pipeline is a few kilobytes of YAML")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MalformedYAMLError(f"{path}: not valid UTF-8 (byte offset {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise from_os_error(e, "the pipeline file") from None
    try:
        data = _load_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise MalformedYAMLError(f"{path}: malformed YAML{where}: {problem}; fix the file's syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise MalformedYAMLError(
            f"{path}: not a Haystack pipeline (expected a mapping with 'components' and 'connections')"
        )
    _check_types(data, str(path))
    _check_connections(data.get("connections", []), str(path))
    _resolve_paths(data, path.parent)
    try:
        return pipeline_from_dict(data)
    except OdqaError:
        raise
    except Exception as e:  # noqa: BLE001 - Haystack raises several types here; name the file
        raise PipelineConfigError(f"{path}: {_one_line(e)}") from e


def unwrap_error(e: PipelineRuntimeError) -> Exception:
    """The odqa error inside a Haystack pipeline error (an OS error as a typed one), else ``e`` itself."""
    cause = e.__cause__
    while isinstance(cause, PipelineRuntimeError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OSError):  # e.g. a model cache that cannot be written: say which path
        return from_os_error(cause)
    return cause if isinstance(cause, OdqaError) else e


def _socket_type(pipeline: Pipeline, name: str, socket: str):
    """The type of component ``name``'s output ``socket``, or ``None`` when it has no such output."""
    found = pipeline.graph.nodes[name].get("output_sockets", {}).get(socket)
    return found.type if found is not None else None


SHARED_SETTINGS = ("model", "template", "context_length", "max_new_tokens", "soft_prompt", "ensemble")


def _check_in_step(packer, reader, source: str) -> None:
    """The packer budgets for the reader, so the settings that shape the prompt must agree."""
    differ = [k for k in SHARED_SETTINGS if getattr(packer, k, None) != getattr(reader, k, None)]
    if differ:
        detail = ", ".join(f"{k}: packer {getattr(packer, k, None)!r} vs reader {getattr(reader, k, None)!r}"
                           for k in differ)
        raise PipelineConfigError(f"{source}: the packer and the reader disagree ({detail}); set them to the same values")


def _store_where(store) -> str:
    """A document store named by its type and where it is (``path``/``url``/``index``, as it has them)."""
    where = [f"{key} '{getattr(store, key)}'" for key in ("path", "url", "index") if getattr(store, key, None)]
    return ", ".join([type(store).__name__, *where])


def _check_stores(pipeline: Pipeline, source: str) -> None:
    """Every document store the pipeline's stages search opens and holds documents: a missing one
    (Qdrant creates an empty collection on first use) would leave those stages finding nothing,
    and the answer would come from the other stages alone."""
    for name, instance in pipeline.walk():
        # Haystack's own retrievers keep their store as ``document_store``, the integrations' as ``_document_store``
        store = getattr(instance, "document_store", None) or getattr(instance, "_document_store", None)
        if not callable(getattr(store, "count_documents", None)):
            continue
        try:
            count = store.count_documents()
        except Exception as e:  # noqa: BLE001 - each store raises its own types; name the stage and the store
            raise IndexError_(f"{source}: component '{name}' cannot open its document store ({_store_where(store)}): "
                              f"{_one_line(e).rstrip('.')}; check the store's settings in the pipeline file (for "
                              "Qdrant: path, or url and the key in $QDRANT_API_KEY)") from e
        if count == 0:
            raise IndexNotFoundError(
                f"{source}: component '{name}' searches an empty document store ({_store_where(store)}); fill it "
                "first, for an odqa index in Qdrant: odqa index export --to qdrant --index INDEX_DIR --path DIR "
                "(or --url URL), see pipelines/README.md")


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``): loading and quantizing
    models frees hundreds of MB of temporaries that glibc would otherwise keep resident, which a
    server holding many pipelines pays for in RSS; so does each batch's decoding, run after run
    (without it, 24 questions in batches of 8 peaked 90 MB higher). A no-op where libc has no
    ``malloc_trim``."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timed_run(pipeline: Pipeline, inputs: dict, include: set[str]) -> tuple[dict, dict[str, float]]:
    """``pipeline.run`` with each stage's seconds and the ``total`` recorded; a component's own
    error comes out unwrapped, as the :class:`~odqa.errors.OdqaError` it raised."""
    record: dict[str, float] = {}
    token = _timings.set(record)
    start = time.perf_counter()
    try:
        out = pipeline.run(inputs, include_outputs_from=include)
    except PipelineRuntimeError as e:
        raise unwrap_error(e) from None
    finally:
        _timings.reset(token)
    record["total"] = time.perf_counter() - start
    return out, record


class _Given:
    """Stands in for a batched stage (:meth:`QA._fed_upstream`) in one question's run: returns
    that question's share of the batch's result, whatever it is called with."""

    def __init__(self, stage):
        self.output: dict[str, Any] = {}
        # the sockets Haystack checks inputs and routes outputs by: the real stage's
        self.__haystack_input__ = stage.__haystack_input__
        self.__haystack_output__ = stage.__haystack_output__

    def run(self, **_inputs) -> dict[str, Any]:
        return self.output


class QA:
    """A loaded pipeline that answers questions. :meth:`close` (or a ``with`` block) releases what its
    stages hold open, such as a Qdrant local store's lock on its directory."""

    def __init__(self, pipeline: Pipeline, source: str = "<pipeline>"):
        self.pipeline = pipeline
        self.source = source
        self._upstream_pipeline: Pipeline | None = None  # the stages before the reader, for batches
        self._fed: tuple[Pipeline, dict[str, _Given]] | None = None  # the same, its retrievers batched
        self._warmed = False  # the first warm-up done: stores checked, the C heap trimmed
        # the reader is the stage that writes answers, the packer the one that reports what it cut:
        # found by their output sockets, so any component with those outputs takes the part
        readers = [n for n, _ in pipeline.walk() if _socket_type(pipeline, n, "answers") == list[GeneratedAnswer]]
        if not readers:
            raise PipelineConfigError(f"{source}: the pipeline has no reader (FrozenLMReader, TextualRecursionReader, "
                                      "NeuralRecursionReader, IDPTLM, or any component with an 'answers' output of "
                                      "GeneratedAnswer), so it cannot answer")
        self.reader = readers[0]
        packers = [n for n, _ in pipeline.walk() if _socket_type(pipeline, n, "dropped_ids") is not None]
        self.packer = packers[0] if packers else None
        if self.packer:
            _check_in_step(pipeline.get_component(self.packer), pipeline.get_component(self.reader), source)
        _install_timer()

    @classmethod
    def load(cls, path: str | Path) -> "QA":
        return cls(load_pipeline(path), str(path))

    def warm_up(self) -> None:
        first = not self._warmed  # every question calls this; the checks and the trim are for the first
        if first:
            _check_stores(self.pipeline, self.source)  # seconds before the models would load
        try:
            self.pipeline.warm_up()
        except PipelineRuntimeError as e:
            raise unwrap_error(e) from None
        if first:
            _trim_heap()
            self._warmed = True

    def close(self) -> None:
        """Release the stages' open resources (Haystack's ``Pipeline.close``: a document store's client;
        Qdrant's local mode lets one client at a time use its directory). A later question reopens them."""
        self.pipeline.close()

    def __enter__(self) -> "QA":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ask(self, question: str, task: str | None = None) -> Answer:
        """Answer one question. Raises :class:`~odqa.errors.OdqaError` subclasses on bad input.

        :param task: For a multitask pipeline (``IDPTLM``, e.g. ``pipelines/idpt_multitask.yml``): the
            task whose template the input is rendered with, ``TASK`` or ``TASK/TEMPLATE``.
        """
        return self.ask_with_outputs(question, every_stage=False, task=task)[0]

    def ask_with_outputs(self, question: str, every_stage: bool = True,
                         task: str | None = None) -> tuple[Answer, dict[str, dict]]:
        """Answer one question and also return each stage's raw outputs (for evaluation)."""
        question = check_question(question)
        inputs: dict[str, Any] = {"query": question}
        if task is not None:
            if "task" not in inspect.signature(self.pipeline.get_component(self.reader).run).parameters:
                raise PipelineConfigError(f"{self.source}: this pipeline takes no task (got task '{task}'); tasks "
                                          "apply to multitask pipelines such as pipelines/idpt_multitask.yml")
            inputs["task"] = task
        self.warm_up()
        include = ({name for name, _ in self.pipeline.walk()} if every_stage else
                   {self.reader} | ({self.packer} if self.packer else set()))
        out, record = _timed_run(self.pipeline, inputs, include)
        return self._answer(question, out, record), out

    def _answer(self, question: str, out: dict, record: dict[str, float]) -> Answer:
        generated = out[self.reader]["answers"][0]
        packed = out.get(self.packer, {}) if self.packer else {}
        return Answer(
            question=question,
            answer=generated.data or "",
            score=float(generated.meta.get("score", 0.0)),
            passages=[PassageRef(d.id, d.meta.get("title", ""), d.content, d.score) for d in generated.documents],
            dropped_ids=list(packed.get("dropped_ids", [])),
            timings={k: round(v, 4) for k, v in record.items()},
            meta={k: v for k, v in generated.meta.items() if k != "score"} | (
                {"budget": packed["budget"]} if "budget" in packed else {}),
        )

    # --- batches ---------------------------------------------------------------------------
    def batchable(self) -> bool:
        """Whether the reader can decode several questions together: it has ``run_batch`` and reads
        the question and the packer's passages only (the frozen reader does; other readers answer
        one question at a time, with the same results)."""
        reader = self.pipeline.get_component(self.reader)
        if not hasattr(reader, "run_batch") or self.packer is None:
            return False
        fed = {(u, data["to_socket"].name) for u, _, data in self.pipeline.graph.in_edges(self.reader, data=True)}
        return fed == {(self.packer, "documents")}

    def _upstream(self) -> Pipeline:
        """The pipeline without its reader, sharing this pipeline's (warm) component instances."""
        if self._upstream_pipeline is None:
            data = self.pipeline.to_dict()
            data["components"].pop(self.reader)
            data["connections"] = [c for c in data["connections"] if self.reader not in
                                   (c["sender"].split(".")[0], c["receiver"].split(".")[0])]
            upstream = pipeline_from_dict(data)  # built cheaply: components load in warm_up
            for name in upstream.graph.nodes:
                upstream.graph.nodes[name]["instance"] = self.pipeline.get_component(name)
            self._upstream_pipeline = upstream
        return self._upstream_pipeline

    def _fed_upstream(self) -> tuple[Pipeline, dict[str, "_Given"]]:
        """The upstream pipeline with each stage that reads the question only and searches many at
        once (a retriever's ``run_batch``) replaced by a :class:`_Given`, which hands on the batch
        search's result for the question being run; the other stages are this pipeline's instances."""
        if self._fed is None:
            upstream = self._upstream()
            batched = {n for n in upstream.graph.nodes if not list(upstream.graph.in_edges(n))
                       and callable(getattr(upstream.get_component(n), "run_batch", None))}
            fed = pipeline_from_dict(upstream.to_dict())
            given = {n: _Given(upstream.get_component(n)) for n in batched}
            for name in fed.graph.nodes:
                fed.graph.nodes[name]["instance"] = given.get(name) or upstream.get_component(name)
            self._fed = fed, given
        return self._fed

    def ask_many_with_outputs(self, questions: list[str], batch_size: int = 8, every_stage: bool = True,
                              task: str | None = None) -> list[tuple[Answer, dict] | FailedAnswer]:
        """:meth:`ask_with_outputs` for several questions, the reader decoding up to ``batch_size`` of
        them together (:meth:`batchable` pipelines without a ``task``; others answer one by one).
        Each answer is the one the question gets alone; a bad question gets a :class:`FailedAnswer`
        in its place. The reader's time in each answer's ``timings`` is its share of the batch's."""
        if batch_size < 1:
            raise PipelineConfigError(f"batch_size must be at least 1, got {batch_size}")
        results: list = []
        if batch_size == 1 or task is not None or not self.batchable():
            for q in questions:
                try:
                    results.append(self.ask_with_outputs(q, every_stage=every_stage, task=task))
                except BadQuestionError as e:
                    results.append(FailedAnswer(q, e))
            return results
        for start in range(0, len(questions), batch_size):
            results += self._ask_batch(questions[start:start + batch_size], every_stage)
        return results

    def _ask_batch(self, questions: list[str], every_stage: bool) -> list:
        self.warm_up()
        (upstream, given), reader = self._fed_upstream(), self.pipeline.get_component(self.reader)
        include = {name for name, _ in upstream.walk()} if every_stage else {self.packer}
        results: list = [None] * len(questions)
        valid = []  # (index, question)
        for i, raw in enumerate(questions):
            try:
                valid.append((i, check_question(raw)))
            except BadQuestionError as e:
                results[i] = FailedAnswer(raw, e)
        searched, seconds = {}, {}
        try:
            for name in given if valid else ():  # the retrievers: every valid question in one search each
                start = time.perf_counter()
                searched[name] = self._upstream().get_component(name).run_batch([q for _, q in valid])
                seconds[name] = (time.perf_counter() - start) / len(valid)
        except BadQuestionError:  # one question a retriever refuses: search each alone, so only it fails
            (upstream, given), searched, seconds = (self._upstream(), {}), {}, {}
        pending = []  # (index, question, outputs, timings)
        for row, (i, question) in enumerate(valid):
            for name, stage in given.items():
                stage.output = {socket: rows[row] for socket, rows in searched[name].items()}
            try:
                out, record = _timed_run(upstream, {"query": question}, include)
            except BadQuestionError as e:
                results[i] = FailedAnswer(questions[i], e)
                continue
            for name, share in seconds.items():
                record["total"] += share - record.get(name, 0.0)
                record[name] = share
            pending.append((i, question, out, record))
        if not pending:
            return results
        start = time.perf_counter()
        try:
            answers = reader.run_batch([q for _, q, _, _ in pending],
                                       [out[self.packer]["documents"] for _, _, out, _ in pending])["answers"]
        except BadQuestionError:  # one question the reader refuses: answer each alone, so only it fails
            answers = []
            for _, q, out, _ in pending:
                try:
                    answers.append(reader.run(query=q, documents=out[self.packer]["documents"])["answers"][0])
                except BadQuestionError as e:
                    answers.append(e)
        share = (time.perf_counter() - start) / len(pending)
        for (i, q, out, record), generated in zip(pending, answers):
            if isinstance(generated, BadQuestionError):
                results[i] = FailedAnswer(questions[i], generated)
                continue
            out[self.reader] = {"answers": [generated]}
            record[self.reader] = share
            record["total"] += share
            results[i] = (self._answer(q, out, record), out)
        _trim_heap()  # each batch's temporaries differ in size, and would fragment the heap ever larger
        return results

    def ask_many(self, questions: list[str], progress: bool = True, task: str | None = None,
                 batch_size: int = 1) -> list[Answer | FailedAnswer]:
        """Answer a list of questions in order, with a progress bar.

        Returns one result per question, in order. A question that cannot be answered (a
        :class:`~odqa.errors.BadQuestionError`: empty, not a string, too long, ...) gets a
        :class:`FailedAnswer` holding the error in its place, and the others are still answered;
        ``result.ok`` tells the two apart. Errors that would fail every question (a broken
        pipeline, a missing index) still raise.

        :param batch_size: Questions the reader decodes together (:meth:`ask_many_with_outputs`);
            the answers are the same as one by one.
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise PipelineConfigError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Answer | FailedAnswer] = []
        with tqdm(total=len(questions), desc="answering", unit="q", disable=not progress) as bar:
            for start in range(0, len(questions), batch_size):
                chunk = questions[start:start + batch_size]
                results += [r if isinstance(r, FailedAnswer) else r[0]
                            for r in self.ask_many_with_outputs(chunk, batch_size, every_stage=False, task=task)]
                bar.update(len(chunk))
        return results
