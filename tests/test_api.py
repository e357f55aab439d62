"""The Python API: odqa.load(yaml) -> QA; ask / ask_many; typed answers; every error type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from haystack import Pipeline
from haystack.core.errors import PipelineRuntimeError

import odqa
from odqa.api import QA, Answer, PassageRef, load_pipeline
from odqa.components import FrozenLMReader
from odqa.errors import (
    BadQuestionError,
    EmptyQuestionError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    MalformedYAMLError,
    OdqaError,
    PipelineConfigError,
    QuestionTooLongError,
    TextEncodingError,
    UnknownComponentError,
)
from odqa.index import build_index

from conftest import CORPUS

REPO = Path(__file__).resolve().parent.parent
STAGES = {"bm25", "dense", "join", "packer", "reader"}
TITLES = {p["title"] for p in CORPUS}


@pytest.fixture(scope="module")
def qa(pipeline_yaml) -> QA:
    return odqa.load(str(pipeline_yaml))


# --- loading ---------------------------------------------------------------------------------
def test_load_pipeline_resolves_relative_paths(pipeline_yaml, flat_index, st_encoder, tiny_lm):
    raw = yaml.safe_load(pipeline_yaml.read_text())
    assert raw["components"]["bm25"]["init_parameters"]["index_dir"].startswith("..")
    p = load_pipeline(pipeline_yaml)
    assert isinstance(p, Pipeline)
    assert Path(p.get_component("bm25").index_dir) == Path(flat_index).resolve()
    assert Path(p.get_component("dense").encoder) == Path(st_encoder).resolve()
    assert Path(p.get_component("reader").model) == Path(tiny_lm).resolve()
    assert Path(p.get_component("packer").model) == Path(tiny_lm).resolve()


def test_pipeline_dumps_loads_round_trip(pipeline_yaml):
    p = load_pipeline(pipeline_yaml)
    text = p.dumps()
    assert Pipeline.loads(text, allowed_modules=["odqa.*"]).dumps() == text


SHIPPED = sorted(p for p in (REPO / "pipelines").glob("*.yml") if not p.name.startswith(("_", ".")))  # _*: scratch


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_pipelines_parse(path):
    # only parses the YAML and builds the components (whose __init__ loads nothing): no models, no index
    qa = QA(load_pipeline(path), str(path))
    from odqa.components.idpt import IDPTLM
    from odqa.components.recursion import NeuralRecursionReader, TextualRecursionReader

    answerers = (FrozenLMReader, TextualRecursionReader, NeuralRecursionReader, IDPTLM)
    assert isinstance(qa.pipeline.get_component(qa.reader), answerers)


# --- asking ----------------------------------------------------------------------------------
def test_ask_returns_a_typed_answer(qa):
    a = qa.ask("  Who wrote Romeo and Juliet?  ")
    assert isinstance(a, Answer)
    assert a.question == "Who wrote Romeo and Juliet?"
    assert isinstance(a.answer, str)
    assert isinstance(a.score, float) and 0.0 <= a.score <= 1.0
    assert a.passages and all(isinstance(p, PassageRef) for p in a.passages)
    assert all(p.title in TITLES and p.text for p in a.passages)
    assert "Romeo and Juliet" in [p.title for p in a.passages]  # BM25 finds it; RRF keeps it
    assert len({p.id for p in a.passages}) == len(a.passages)
    assert set(a.dropped_ids).isdisjoint(p.id for p in a.passages)
    assert set(a.timings) == STAGES | {"total"}
    assert all(isinstance(v, float) and v >= 0 for v in a.timings.values())
    assert a.timings["total"] >= a.timings["reader"]
    budget = a.meta["budget"]
    assert budget["prompt_tokens"] + budget["max_new_tokens"] <= budget["context_length"]
    assert a.meta["prompt_tokens"] == budget["prompt_tokens"]
    assert json.loads(json.dumps(a.to_dict()))["answer"] == a.answer  # JSON-serializable


def test_ask_from_another_working_directory(pipeline_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = odqa.load(str(pipeline_yaml)).ask("What is the capital of Australia?")
    assert a.passages


def test_ask_many(qa):
    questions = ["Who painted the Mona Lisa?", "Which planet is known as the Red Planet?"]
    answers = qa.ask_many(questions, progress=False)
    assert [a.question for a in answers] == questions
    assert all(isinstance(a, Answer) for a in answers)
    assert qa.ask_many([], progress=False) == []


def test_packer_and_reader_must_agree(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["packer"]["init_parameters"]["context_length"] = 999
    path = pipeline_yaml.parent / "disagree.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineConfigError) as e:
        odqa.load(str(path))
    assert "context_length: packer 999 vs reader" in str(e.value) and "disagree.yml" in str(e.value)


def test_pipeline_with_ranker(tmp_path, write_pipeline, cross_encoder):
    path = write_pipeline(tmp_path, ranker=cross_encoder, top_k=4)
    a = odqa.load(str(path)).ask("Who wrote Romeo and Juliet?")
    assert "ranker" in a.timings
    assert len(a.passages) + len(a.dropped_ids) <= 4


def test_pipeline_with_soft_prompt(tmp_path, write_pipeline, soft_prompt_dir):
    path = write_pipeline(tmp_path, soft_prompt=soft_prompt_dir, context_length=700)
    a = odqa.load(str(path)).ask("Who wrote Romeo and Juliet?")
    budget = a.meta["budget"]
    assert budget["soft_prompt_tokens"] == 4
    assert a.meta["prompt_tokens"] == budget["prompt_tokens"] + 4  # the reader counts the soft prompt too
    assert budget["prompt_tokens"] + 4 + budget["max_new_tokens"] <= 700


# --- question errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_empty_question(qa, question):
    with pytest.raises(EmptyQuestionError) as e:
        qa.ask(question)
    assert "empty" in str(e.value) and "non-empty question" in str(e.value)


def test_question_too_long(qa):
    with pytest.raises(QuestionTooLongError) as e:
        qa.ask("Who wrote " + "Romeo and Juliet and " * 300 + "?")
    assert "context_length=1024" in str(e.value)
    assert isinstance(e.value, BadQuestionError)


def test_non_utf8_question(qa):
    with pytest.raises((BadQuestionError, TextEncodingError)):
        qa.ask("Who wrote Romeo and Juliet \udce9?")


# --- pipeline file errors -------------------------------------------------------------------------
def test_missing_pipeline_file(tmp_path):
    with pytest.raises(PipelineConfigError, match="does not exist"):
        odqa.load(str(tmp_path / "nope.yml"))


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("components:\n  bm25:\n    type: x\n   init_parameters: {\n", encoding="utf-8")
    with pytest.raises(MalformedYAMLError) as e:
        load_pipeline(path)
    assert str(path) in str(e.value) and "line 4" in str(e.value)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "connections: []\n", "components: 3\n"])
def test_yaml_that_is_not_a_pipeline(tmp_path, text):
    path = tmp_path / "bad.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MalformedYAMLError, match="not a Haystack pipeline"):
        load_pipeline(path)


def test_component_without_type(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("components:\n  bm25:\n    init_parameters: {}\nconnections: []\n", encoding="utf-8")
    with pytest.raises(MalformedYAMLError, match="'bm25' needs a 'type'"):
        load_pipeline(path)


def test_unknown_component(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["bm25"]["type"] = "odqa.components.retrievers.NoSuchRetriever"
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(UnknownComponentError) as e:
        load_pipeline(path)
    assert "odqa.components.retrievers.NoSuchRetriever" in str(e.value) and "'bm25'" in str(e.value)


def test_bad_connection(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["connections"].append({"sender": "nowhere.documents", "receiver": "reader.documents"})
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PipelineConfigError) as e:
        load_pipeline(path)
    assert str(path) in str(e.value)


def test_pipeline_without_reader(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    del data["components"]["reader"]
    data["connections"] = [c for c in data["connections"] if not c["receiver"].startswith("reader")]
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="has no reader \\(FrozenLMReader"):
        odqa.load(str(path))


def test_non_utf8_pipeline_file(tmp_path, pipeline_yaml):
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"# caf\xe9\n" + pipeline_yaml.read_bytes())
    with pytest.raises(MalformedYAMLError, match="UTF-8"):
        load_pipeline(path)


def test_non_utf8_corpus(tmp_path, st_encoder):
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(TextEncodingError, match=":2:"):
        build_index(str(corpus), tmp_path / "idx", encoder=st_encoder, progress=False)
    assert not (tmp_path / "idx").exists()


# --- index errors ----------------------------------------------------------------------------------
def test_missing_index(tmp_path, write_pipeline):
    path = write_pipeline(tmp_path / "p", index_dir=tmp_path / "no-index")
    qa = odqa.load(str(path))
    with pytest.raises(IndexNotFoundError) as e:
        qa.ask("Who wrote Romeo and Juliet?")
    assert "no-index" in str(e.value) and "odqa index build" in str(e.value)


def test_index_built_with_another_encoder(tmp_path, write_pipeline, st_encoder_other):
    path = write_pipeline(tmp_path / "p", encoder=st_encoder_other)
    with pytest.raises(IndexMismatchError) as e:
        odqa.load(str(path)).ask("Who wrote Romeo and Juliet?")
    assert "rebuild the index" in str(e.value)


def test_truncated_index_file(tmp_path, write_pipeline, copy_index):
    index_dir = copy_index()
    f = index_dir / "dense.faiss"
    f.write_bytes(f.read_bytes()[:100])
    path = write_pipeline(tmp_path / "p", index_dir=index_dir)
    with pytest.raises(IndexCorruptError) as e:
        odqa.load(str(path)).ask("Who wrote Romeo and Juliet?")
    assert "dense.faiss" in str(e.value) and "truncated" in str(e.value)


def test_errors_share_one_base_class():
    for err in (EmptyQuestionError, QuestionTooLongError, MalformedYAMLError, UnknownComponentError,
                IndexNotFoundError, IndexMismatchError, IndexCorruptError, TextEncodingError):
        assert issubclass(err, OdqaError)
