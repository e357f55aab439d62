"""The Python API: odqa.load(yaml) -> QA; ask / ask_many; typed answers; every error type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from haystack import Pipeline
from haystack.core.errors import PipelineRuntimeError

import odqa
from odqa.api import MAX_PIPELINE_BYTES, QA, Answer, FailedAnswer, PassageRef, load_pipeline
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
    QuestionTypeError,
    TextEncodingError,
    UnknownComponentError,
    UnsafePipelineError,
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


def test_ask_many_keeps_every_answer_around_a_bad_question(qa):
    good = "Who wrote Romeo and Juliet?"
    results = qa.ask_many([good, "", 123, "?!", good], progress=False)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert isinstance(results[0], Answer) and results[0].answer == results[4].answer
    failed = results[1:4]
    assert all(isinstance(r, FailedAnswer) for r in failed)
    assert [type(r.error) for r in failed] == [EmptyQuestionError, QuestionTypeError, BadQuestionError]
    assert failed[1].to_dict() == {"question": "123", "error": str(failed[1].error), "error_type": "QuestionTypeError"}



@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_batched_answers_are_the_single_answers(qa, batch_size):
    """Batches of several sizes, a bad question among them: same answers, passages and errors as one
    by one, in input order; the reader's share of its batch is in each answer's timings."""
    questions = ["Who wrote Romeo and Juliet?", "", "Which planet is known as the Red Planet?", 123,
                 "Who painted the Mona Lisa?", "What is the capital of Australia?", "?!"]
    alone = qa.ask_many(questions, progress=False)
    batched = qa.ask_many(questions, progress=False, batch_size=batch_size)
    assert [r.ok for r in batched] == [r.ok for r in alone] == [True, False, True, False, True, True, False]
    for a, b in zip(alone, batched):
        if a.ok:
            assert (b.question, b.answer, [p.id for p in b.passages], b.dropped_ids) == (
                a.question, a.answer, [p.id for p in a.passages], a.dropped_ids)
            assert b.score == pytest.approx(a.score, abs=1e-5) and b.meta == a.meta
            assert set(b.timings) == set(a.timings) and b.timings["reader"] > 0
        else:
            assert (type(b.error), str(b.error)) == (type(a.error), str(a.error))


def test_batched_outputs_hold_every_stage(qa):
    [(answer, outputs)] = qa.ask_many_with_outputs(["Who wrote Romeo and Juliet?"], batch_size=4)
    assert set(outputs) == STAGES and outputs["reader"]["answers"][0].data == answer.answer
    assert qa.batchable()
    with pytest.raises(PipelineConfigError, match="batch_size must be at least 1, got 0"):
        qa.ask_many(["Who?"], batch_size=0)


def test_a_question_the_reader_refuses_fails_alone_in_its_batch(qa, monkeypatch):
    """The reader refuses one question of a batch (e.g. over its budget): only that one fails."""
    from odqa.errors import QuestionTooLongError

    reader = qa.pipeline.get_component(qa.reader)
    real_run = reader.run

    def picky(query, documents=None):
        if "Mona Lisa" in query:
            raise QuestionTooLongError("too long for the test")
        return real_run(query=query, documents=documents)

    def refuse(queries, documents):
        raise QuestionTooLongError("one question of the batch is too long")

    monkeypatch.setattr(reader, "run_batch", refuse)
    monkeypatch.setattr(reader, "run", picky)
    results = qa.ask_many(["Who wrote Romeo and Juliet?", "Who painted the Mona Lisa?"], progress=False, batch_size=2)
    assert [r.ok for r in results] == [True, False] and str(results[1].error) == "too long for the test"

def test_batched_retrievers_search_once_per_batch(qa, monkeypatch):
    """Each retriever searches a batch's questions in one run_batch call, never one by one."""
    calls = {"batch": [], "run": 0}
    for name in ("bm25", "dense"):
        stage = qa.pipeline.get_component(name)
        real = stage.run_batch

        def spy(queries, top_k=None, real=real, name=name):
            calls["batch"].append((name, len(queries)))
            return real(queries, top_k)

        monkeypatch.setattr(stage, "run_batch", spy)
        monkeypatch.setattr(stage, "run", lambda **_: calls.__setitem__("run", calls["run"] + 1))
    questions = ["Who wrote Romeo and Juliet?", "", "Which planet is known as the Red Planet?",
                 "Who painted the Mona Lisa?", "What is the capital of Australia?"]
    results = qa.ask_many(questions, progress=False, batch_size=5)
    assert [r.ok for r in results] == [True, False, True, True, True]
    assert sorted(calls["batch"]) == [("bm25", 4), ("dense", 4)] and calls["run"] == 0
    assert all(r.timings["bm25"] > 0 and r.timings["dense"] > 0 for r in results if r.ok)


def test_a_question_a_retriever_refuses_fails_alone_in_its_batch(qa, monkeypatch):
    """A retriever refuses one question of a batch search: the batch is searched one by one, and
    only that question fails."""
    from odqa.errors import QuestionTooLongError

    stage = qa.pipeline.get_component("bm25")
    real_batch = stage.run_batch  # run() searches a batch of one

    def picky(queries, top_k=None):
        if any("Mona Lisa" in q for q in queries):
            raise QuestionTooLongError("too long for the retriever")
        return real_batch(queries, top_k)

    monkeypatch.setattr(stage, "run_batch", picky)
    results = qa.ask_many(["Who wrote Romeo and Juliet?", "Who painted the Mona Lisa?"], progress=False, batch_size=2)
    assert [r.ok for r in results] == [True, False]
    assert str(results[1].error) == "too long for the retriever"


def test_a_question_that_is_not_a_string(qa):
    with pytest.raises(QuestionTypeError, match=r"the question must be a string, got int \(123\)"):
        qa.ask(123)
    with pytest.raises(QuestionTypeError, match="got NoneType"):
        qa.ask(None)


def test_whitespace_in_a_question_does_not_change_the_answer(qa):
    clean = qa.ask("Who wrote Romeo and Juliet?")
    messy = qa.ask("Who\n\nwrote\r\nRomeo \t and\u00a0Juliet\n?\n\n")
    assert messy.question == clean.question == "Who wrote Romeo and Juliet?"
    assert messy.answer == clean.answer and [p.id for p in messy.passages] == [p.id for p in clean.passages]


@pytest.mark.parametrize("question", ["?", "?!...", " - ", "\u2026"])
def test_a_question_without_words_is_refused(qa, question):
    with pytest.raises(BadQuestionError, match="has no letter or digit.*ask a question in words"):
        qa.ask(question)


def test_packer_and_reader_must_agree(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["packer"]["init_parameters"]["context_length"] = 999
    path = pipeline_yaml.parent / "disagree.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineConfigError) as e:
        odqa.load(str(path))
    assert "context_length: packer 999 vs reader" in str(e.value) and "disagree.yml" in str(e.value)
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["packer"]["init_parameters"].update(ensemble=True, max_passages=2)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineConfigError, match="ensemble: packer True vs reader False"):
        odqa.load(str(path))


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


def test_a_bad_question_is_quoted_only_in_part(qa):
    with pytest.raises(BadQuestionError) as e:
        qa.ask("Who wrote \udce9" * 5000)
    msg = str(e.value)
    assert len(msg) < 250 and "(55,000 characters)" in msg and "not valid UTF-8" in msg


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


def test_uninstalled_integration_says_what_to_install(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["bm25"]["type"] = "haystack_integrations.components.retrievers.nosuch.NoSuchRetriever"
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(UnknownComponentError, match=r"'bm25' has unknown type 'haystack_integrations\..*Retriever'; "
                                                    r"it is a Haystack integration's: install its package"):
        load_pipeline(path)


# --- a pipeline file is data: nothing it names runs before it is checked ------------------------
def _with_type(tmp_path, pipeline_yaml, type_) -> Path:
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["bm25"]["type"] = type_
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_type_outside_the_allowlist_is_not_imported(tmp_path, pipeline_yaml, capfd):
    import sys

    assert "this" not in sys.modules
    with pytest.raises(UnsafePipelineError) as e:
        load_pipeline(_with_type(tmp_path, pipeline_yaml, "this.X"))
    assert "Beautiful is better than ugly" not in capfd.readouterr().out  # `import this` prints the Zen
    assert "this" not in sys.modules
    msg = str(e.value)
    assert "component 'bm25' has type 'this.X', outside the modules a pipeline may use" in msg
    assert "odqa.*, haystack.*, haystack_integrations.*" in msg and "nothing was imported" in msg
    assert not msg.rstrip().endswith("either:")


def test_a_module_whose_import_writes_a_file_is_never_imported(tmp_path, pipeline_yaml, monkeypatch):
    import sys

    marker = tmp_path / "pwned"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for type_ in ("evil_mod.X", "odqa_evil.X", "haystackx.X", "Bare"):
        with pytest.raises(UnsafePipelineError, match=f"'{type_}', outside"):
            load_pipeline(_with_type(tmp_path, pipeline_yaml, type_))
    assert not marker.exists() and "evil_mod" not in sys.modules


def test_a_nested_type_outside_the_allowlist(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["join"]["init_parameters"]["join_mode"] = {"type": "evil_mod.Mode", "init_parameters": {}}
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(UnsafePipelineError, match="'join' init_parameters.join_mode names type 'evil_mod.Mode'"):
        load_pipeline(path)


def test_haystack_errors_keep_their_cause(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["join"]["init_parameters"]["join_mode"] = "nope"
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PipelineConfigError) as e:
        load_pipeline(path)
    assert "component 'join'" in str(e.value) and "Unknown join mode 'nope'" in str(e.value)
    assert "\n" not in str(e.value)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(12)
) + "components: {}\nconnections: []\n"


@pytest.mark.parametrize("text, fragment", [
    (BILLION_LAUGHS, "line 1: YAML anchors and aliases"),
    ("components: &c {}\nconnections: []\n", "line 1: YAML anchors and aliases"),
    ("components:\n  x: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels deep"),
])
def test_yaml_that_could_hang_is_refused_before_expansion(tmp_path, text, fragment):
    import time

    path = tmp_path / "p.yml"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(UnsafePipelineError, match=fragment):
        load_pipeline(path)
    assert time.perf_counter() - start < 2


def test_a_pipeline_file_over_the_size_limit(tmp_path):
    path = tmp_path / "big.yml"
    path.write_text("components: {}\n# " + "x" * MAX_PIPELINE_BYTES + "\n", encoding="utf-8")
    with pytest.raises(UnsafePipelineError, match="over the 1,048,576-byte limit"):
        load_pipeline(path)


def test_bad_connection(tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["connections"].append({"sender": "nowhere.documents", "receiver": "reader.documents"})
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PipelineConfigError) as e:
        load_pipeline(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("connections, fragment", [
    ("nope", "'connections' must be a list of {sender: COMPONENT.SOCKET, receiver: COMPONENT.SOCKET} mappings, got str"),
    ([{"sender": ["a"], "receiver": "reader.documents"}], "connection 1 is"),
    ([None], "connection 1 is 'None'"),
])
def test_connections_of_the_wrong_shape(tmp_path, pipeline_yaml, connections, fragment):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["connections"] = connections
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(MalformedYAMLError) as e:
        load_pipeline(path)
    assert fragment in str(e.value)


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


def test_the_reader_is_found_by_its_answers_output():
    from haystack import component
    from haystack.dataclasses import GeneratedAnswer

    @component
    class EchoReader:  # not an odqa class: it writes answers, so it is the pipeline's reader
        @component.output_types(answers=list[GeneratedAnswer])
        def run(self, query: str):
            return {"answers": [GeneratedAnswer(data=query.upper(), query=query, documents=[], meta={"score": 1.0})]}

    pipe = Pipeline()
    pipe.add_component("echo", EchoReader())
    qa = QA(pipe, "<test>")
    assert qa.reader == "echo" and qa.packer is None
    assert qa.ask("who  wrote\nHamlet?").answer == "WHO WROTE HAMLET?"
