"""The ``odqa`` command, run in-process through ``odqa.cli.main``: one clear error line, resumable runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import odqa.api
from odqa.cli import main

from conftest import CORPUS

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    {"id": "q1", "question": "Who wrote Romeo and Juliet?", "answers": ["William Shakespeare"]},
    {"id": "q2", "question": "What is the capital of Australia?", "answers": ["Canberra"]},
    {"id": "q3", "question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"},
    {"id": "q4", "question": "Which planet is known as the Red Planet?"},
]
LONG_QUESTION = "Who wrote " + "Romeo and Juliet and " * 300 + "?"


@pytest.fixture(scope="module")
def warm(pipeline_yaml):
    """Load the test pipeline's models once, so the error tests see only odqa's own output."""
    odqa.load(str(pipeline_yaml)).ask("Who wrote Romeo and Juliet?")
    return str(pipeline_yaml)


@pytest.fixture
def quiet_loading():
    """No transformers weight-loading bars, so a test that loads a model sees only odqa's own
    output on stderr."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if was:
        hf_logging.enable_progress_bar()


@pytest.fixture
def questions_file(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


def assert_one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("error: ")
    return lines[0]


def _count_asks(monkeypatch) -> list[str]:
    """Record every question the pipeline answers alone (the real method still runs)."""
    asked: list[str] = []
    real = odqa.api.QA.ask_with_outputs

    def ask(self, question, *args, **kwargs):
        asked.append(question)
        return real(self, question, *args, **kwargs)

    monkeypatch.setattr(odqa.api.QA, "ask_with_outputs", ask)
    return asked


# --- errors: one line, no traceback ------------------------------------------------------------
@pytest.mark.parametrize("question", ["", "   "])
def test_ask_empty_question(capsys, warm, question):
    line = assert_one_error_line(capsys, main(["ask", question, "--pipeline", warm]))
    assert "empty" in line


def test_question_too_long(capsys, warm):
    line = assert_one_error_line(capsys, main(["run", warm, "--question", LONG_QUESTION]))
    assert "shorten the question" in line


def test_missing_pipeline(capsys, tmp_path):
    line = assert_one_error_line(capsys, main(["run", str(tmp_path / "nope.yml"), "--question", "x"]))
    assert "nope.yml" in line


def test_malformed_pipeline(capsys, tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("components:\n  a: [\n", encoding="utf-8")
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "x"]))
    assert "malformed YAML" in line and "line" in line


def test_unknown_component(capsys, tmp_path, pipeline_yaml):
    data = yaml.safe_load(pipeline_yaml.read_text())
    data["components"]["reader"]["type"] = "odqa.components.readers.Nope"
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "x"]))
    assert "odqa.components.readers.Nope" in line


def test_non_utf8_pipeline(capsys, tmp_path, pipeline_yaml):
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"# \xff\n" + pipeline_yaml.read_bytes())
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "x"]))
    assert "UTF-8" in line


def test_missing_index(capsys, tmp_path, write_pipeline):
    path = write_pipeline(tmp_path, index_dir=tmp_path / "no-index")
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "Who wrote Hamlet?"]))
    assert "no-index" in line


def test_a_search_knob_the_index_lacks(capsys, tmp_path, write_pipeline):
    import yaml

    path = write_pipeline(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["components"]["dense"]["init_parameters"]["nprobe"] = 8
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "Who wrote Hamlet?"]))
    assert "nprobe=8 is set, but index" in line and "has FAISS type 'flat'" in line and "remove nprobe" in line


def test_index_with_another_encoder(capsys, tmp_path, write_pipeline, st_encoder_other, quiet_loading):
    path = write_pipeline(tmp_path, encoder=st_encoder_other)
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "Who wrote Hamlet?"]))
    assert "was built with encoder" in line


def test_truncated_index(capsys, tmp_path, write_pipeline, copy_index, warm):
    index_dir = copy_index()
    f = index_dir / "passages.jsonl"
    f.write_bytes(f.read_bytes()[:-10])
    path = write_pipeline(tmp_path / "p", index_dir=index_dir)
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "Who wrote Hamlet?"]))
    assert "passages.jsonl" in line and "--force" in line


def test_question_and_questions_together(capsys, warm, questions_file):
    line = assert_one_error_line(capsys, main(["run", warm, "--question", "x", "--questions", str(questions_file)]))
    assert "exactly one of" in line


def test_questions_without_out(capsys, warm, questions_file):
    line = assert_one_error_line(capsys, main(["run", warm, "--questions", str(questions_file)]))
    assert "--out" in line


def test_malformed_questions_file(capsys, tmp_path, warm):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a?"}\n{"question": "b?"}\n{"id": 3}\n{"question": "c \\"d\\"?"}\n{"x"\n',
                    encoding="utf-8")
    line = assert_one_error_line(capsys, main(["run", warm, "--questions", str(path), "--out", str(tmp_path / "o")]))
    assert ":5:" in line and "invalid JSON" in line  # a line that is not JSON at all stops the run before it starts
    assert not (tmp_path / "o").exists()


def test_non_utf8_questions_file(capsys, tmp_path, warm):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "ok?"}\n{"question": "caf\xe9?"}\n')
    line = assert_one_error_line(capsys, main(["run", warm, "--questions", str(path), "--out", str(tmp_path / "o")]))
    assert ":2:" in line and "UTF-8" in line


def test_non_utf8_question_argument(capsys, warm):
    # what Python makes of a non-UTF-8 byte in argv (surrogateescape)
    bad = os.fsdecode(b"Who wrote Romeo and Juliet \xe9?")
    assert_one_error_line(capsys, main(["run", warm, "--question", bad]))


@pytest.mark.parametrize("content, fragment", [
    ('{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n', ":2:"),
    ('{"id": "1", "text": "ok"}\nnot json\n', ":2:"),
    ('{"id": "1", "text": "ok"}\n{"id": "1", "text": "again"}\n', "twice"),
])
def test_index_build_bad_corpus(capsys, tmp_path, st_encoder, content, fragment):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(content.encode("latin-1"))
    code = main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--encoder", st_encoder])
    line = assert_one_error_line(capsys, code)
    assert fragment in line
    assert not (tmp_path / "idx").exists()


def test_index_build_bad_tsv_header(capsys, tmp_path, st_encoder):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("id\ttitle\ttext\n1\tT\tx\n", encoding="utf-8")
    code = main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--encoder", st_encoder])
    assert ":1:" in assert_one_error_line(capsys, code)


def test_index_build_missing_corpus_and_existing_out(capsys, tmp_path, st_encoder, flat_index, corpus_jsonl):
    code = main(["index", "build", "--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "i")])
    assert "none.jsonl" in assert_one_error_line(capsys, code)
    code = main(["index", "build", "--corpus", corpus_jsonl, "--out", flat_index, "--encoder", st_encoder])
    assert "--force" in assert_one_error_line(capsys, code)


def test_index_build_faiss_types_and_pq_m(capsys, tmp_path, st_encoder, corpus_jsonl):
    from odqa.index import FAISS_TYPES

    build = ["index", "build", "--corpus", corpus_jsonl, "--encoder", st_encoder, "--limit", "5"]
    code = main([*build, "--out", str(tmp_path / "pq"), "--faiss", "ivfpq", "--pq-m", "5"])
    assert "--pq-m 5 does not divide the encoder's dimension 32" in assert_one_error_line(capsys, code)
    code = main([*build, "--out", str(tmp_path / "flat"), "--faiss", "flat", "--pq-m", "8"])
    assert "--pq-m 8 applies only to --faiss ivfpq" in assert_one_error_line(capsys, code)
    with pytest.raises(SystemExit):  # argparse: the choices are odqa.index.FAISS_TYPES
        main([*build, "--out", str(tmp_path / "x"), "--faiss", "pq"])
    assert ", ".join(f"'{t}'" for t in FAISS_TYPES) in capsys.readouterr().err
    assert main([*build, "--out", str(tmp_path / "sq8"), "--faiss", "hnsw-sq8"]) == 0
    assert "faiss hnsw-sq8" in capsys.readouterr().out


def test_debug_shows_the_exception(capsys, warm):
    from odqa.errors import EmptyQuestionError

    with pytest.raises(EmptyQuestionError):
        main(["--debug", "ask", "", "--pipeline", warm])


def test_ask_empty_question_subprocess(tmp_path):
    env = {**os.environ, "ODQA_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "odqa.cli", "ask", ""], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: the question is empty")
    assert proc.stdout == ""


def test_errors_after_model_loading_are_one_line(capsys, tmp_path, write_pipeline, tiny_lm, st_encoder):
    # fresh copies of the models: nothing is cached in this process, so they really load
    lm, enc = tmp_path / "lm", tmp_path / "enc"
    shutil.copytree(tiny_lm, lm)
    shutil.copytree(st_encoder, enc)
    path = write_pipeline(tmp_path / "p", lm=lm, encoder=enc)
    assert_one_error_line(capsys, main(["run", str(path), "--question", LONG_QUESTION]))


# --- success paths -----------------------------------------------------------------------------
def test_run_one_question_json(capsys, warm):
    assert main(["run", warm, "--question", "Who wrote Romeo and Juliet?", "--json"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["question"] == "Who wrote Romeo and Juliet?"
    assert isinstance(data["answer"], str) and isinstance(data["score"], float)
    assert data["passages"] and all({"id", "title", "text", "score"} <= set(p) for p in data["passages"])
    assert "total" in data["timings"]


def test_ask_plain_text(capsys, warm):
    assert main(["ask", "Who painted the Mona Lisa?", "--pipeline", warm]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: Who painted the Mona Lisa?\nA: ")
    assert "sources:" in out and "timings:" in out and "total" in out


def test_run_questions_and_resume_after_kill(capsys, tmp_path, warm, questions_file, monkeypatch):
    out = tmp_path / "answers" / "out.jsonl"
    asked = _count_asks(monkeypatch)
    assert main(["run", warm, "--questions", str(questions_file), "--out", str(out)]) == 0
    assert asked == [q["question"] for q in QUESTIONS]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q1", "q2", "q3", "q4"]
    first = json.loads(lines[0])
    assert first["answers"] == ["William Shakespeare"] and isinstance(first["answer"], str)
    assert json.loads(lines[2])["answers"] == ["Leonardo da Vinci"]  # "answer" is accepted too

    # simulate a kill in the middle of writing the third line
    data = out.read_bytes()
    cut = len(lines[0]) + len(lines[1]) + 2 + len(lines[2]) // 2
    out.write_bytes(data[:cut])
    asked.clear()
    capsys.readouterr()
    assert main(["run", warm, "--questions", str(questions_file), "--out", str(out)]) == 0
    assert asked == [QUESTIONS[2]["question"], QUESTIONS[3]["question"]]  # only the missing ones
    assert "resuming: 2 of 4" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == ["q1", "q2", "q3", "q4"]  # every id exactly once

    # a complete file: a rerun answers nothing
    asked.clear()
    assert main(["run", warm, "--questions", str(questions_file), "--out", str(out)]) == 0
    assert asked == []
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4


def test_run_batch_records_a_bad_question_and_goes_on(capsys, tmp_path, warm):
    path = tmp_path / "q.jsonl"
    rows = [QUESTIONS[0], {"id": "long", "question": LONG_QUESTION}, QUESTIONS[1]]
    path.write_text("".join(json.dumps(q) + "\n" for q in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["run", warm, "--questions", str(path), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["q1", "long", "q2"]
    assert "shorten the question" in records[1]["error"] and "answer" not in records[1]
    assert isinstance(records[2]["answer"], str)
    assert "1 could not be answered" in capsys.readouterr().err


def test_resume_when_kill_left_a_complete_record_without_newline(tmp_path, warm, questions_file, monkeypatch):
    out = tmp_path / "out.jsonl"
    assert main(["run", warm, "--questions", str(questions_file), "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text(lines[0] + "\n" + lines[1], encoding="utf-8")  # killed before the second "\n"
    asked = _count_asks(monkeypatch)
    assert main(["run", warm, "--questions", str(questions_file), "--out", str(out)]) == 0
    assert len(asked) == 2
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4"]


def test_index_build(capsys, tmp_path, corpus_tsv, st_encoder):
    out = tmp_path / "idx"
    assert main(["index", "build", "--corpus", corpus_tsv, "--out", str(out), "--encoder", st_encoder,
                 "--faiss", "hnsw", "--bm25-k1", "0.9", "--bm25-stemmer", "none", "--limit", "10"]) == 0
    assert f"built {out}: 10 passages" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 10 and manifest["faiss"]["type"] == "hnsw"
    assert manifest["bm25"]["k1"] == 0.9 and manifest["bm25"]["stemmer"] is None
    assert manifest["corpus"] == corpus_tsv
    assert len(CORPUS) > 10


def test_run_deduplicates_repeated_questions(tmp_path, warm, monkeypatch):
    path = tmp_path / "q.jsonl"
    rows = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    asked = _count_asks(monkeypatch)
    assert main(["run", warm, "--questions", str(path), "--out", str(out)]) == 0
    ids = [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == ["q1", "q2"]
    assert len(asked) == 2


# --- odqa eval retrieval: DPR retriever-output files ------------------------------------------
def _dpr_entry(question, answers, texts):
    return {"question": question, "answers": answers,
            "ctxs": [{"id": str(i), "title": "t", "text": t, "score": 1.0, "has_answer": False}
                     for i, t in enumerate(texts)]}


# answers at rank 1, rank 3 and nowhere
DPR_RESULTS = [_dpr_entry("q1", ["Paris"], ["Paris is big.", "no", "no", "no", "no"]),
               _dpr_entry("q2", ["Mars"], ["no", "no", "Mars is red.", "no", "no"]),
               _dpr_entry("q3", ["Bob"], ["no", "no", "no", "no", "no"])]


@pytest.fixture
def dpr_results(tmp_path) -> Path:
    path = tmp_path / "dpr_results.json"
    path.write_text(json.dumps(DPR_RESULTS), encoding="utf-8")
    return path


def test_eval_retrieval_table(capsys, dpr_results):
    assert main(["eval", "retrieval", "--results", str(dpr_results), "--k", "1,5,20,100"]) == 0
    out = capsys.readouterr().out
    assert "3 questions, 5 ctxs per question on average" in out
    assert "    1   33.3%" in out and "    5   66.7%" in out
    assert "skipped k = 20, 100" in out
    # the file flags every ctx False; odqa finds the two answers
    assert "disagrees with the file's has_answer flag on 2 of 15 ctxs" in out
    assert not (dpr_results.parent / "metrics.json").exists()


def test_eval_retrieval_json_and_out(capsys, tmp_path, dpr_results):
    out = tmp_path / "run"
    assert main(["eval", "retrieval", "--results", str(dpr_results), "--out", str(out), "--k", "1,3",
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["topk"] == {"top1": 33.33, "top3": 66.67} and metrics["questions"] == 3
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "| 3 | 66.7 |" in (out / "report.md").read_text()
    assert (out / "topk.png").exists()


def _bad(drop=(), ctx_drop=(), ctx=None, **fields) -> bytes:
    """A results file whose second entry (index 1) lacks ``drop`` fields, has ``fields`` replaced,
    and whose first ctx lacks ``ctx_drop`` fields and has ``ctx`` replaced."""
    entry = _dpr_entry("q", ["a"], ["a text"])
    entry["ctxs"][0].update(ctx or {})
    for key in ctx_drop:
        del entry["ctxs"][0][key]
    entry.update(fields)
    for key in drop:
        del entry[key]
    return json.dumps([_dpr_entry("ok", ["a"], ["a"]), entry]).encode()


@pytest.mark.parametrize("content, fragments", [
    (b'[{"question": "q", "answers": ["a"], "ctxs": [}]', ["r.json:1: invalid JSON at column", "expected a JSON list"]),
    (b'{"q1": {"question": "q", "answers": ["a"], "contexts": []}}', ["top level is a JSON object, not a list"]),
    (b"[]", ["the list is empty"]),
    (_bad(drop=["question"]), ["entry 1 (0-based): missing 'question' field"]),
    (_bad(drop=["answers"]), ["entry 1 (0-based): missing 'answers' field"]),
    (_bad(drop=["ctxs"]), ["entry 1 (0-based): missing 'ctxs' field"]),
    (_bad(answers=[]), ["entry 1 (0-based): empty 'answers' list"]),
    (_bad(answers="a"), ["entry 1 (0-based): 'answers' must be a list of strings"]),
    (_bad(ctx_drop=["text", "has_answer"]),
     ["entry 1 (0-based), ctx 0: has neither 'text' nor 'has_answer'"]),
    (_bad(ctx={"has_answer": "yes"}), ["entry 1 (0-based), ctx 0: 'has_answer' must be true or false"]),
    (b'[{"question": "caf\xe9", "answers": ["a"], "ctxs": []}]', ["r.json:1: not valid UTF-8 (byte 0xe9", "iconv"]),
])
def test_eval_retrieval_bad_input(capsys, tmp_path, content, fragments):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    line = assert_one_error_line(capsys, main(["eval", "retrieval", "--results", str(path)]))
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line



def test_run_in_batches_writes_the_same_answers(tmp_path, warm):
    path = tmp_path / "q.jsonl"
    rows = [QUESTIONS[0], {"id": "long", "question": LONG_QUESTION}, *QUESTIONS[1:]]
    path.write_text("".join(json.dumps(q) + "\n" for q in rows), encoding="utf-8")
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    assert main(["run", warm, "--questions", str(path), "--out", str(one)]) == 0
    assert main(["run", warm, "--questions", str(path), "--out", str(three), "--batch-size", "3"]) == 0

    def records(p):
        return [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in p.read_text().splitlines()]
    assert records(three) == records(one) and "error" in records(three)[1]


@pytest.mark.parametrize("command", ["run", "eval"])
@pytest.mark.parametrize("value", ["0", "-2", "eight"])
def test_bad_batch_size(capsys, tmp_path, warm, command, value):
    argv = ["run", warm, "--questions", "q.jsonl", "--out", str(tmp_path / "o")] if command == "run" else [
        "eval", "--pipeline", warm, "--questions", "q.jsonl", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--batch-size", value])
    assert exit_.value.code == 2
    assert f"--batch-size: must be a whole number of at least 1, got '{value}'" in capsys.readouterr().err

def test_eval_retrieval_missing_file(capsys, tmp_path):
    line = assert_one_error_line(capsys, main(["eval", "retrieval", "--results", str(tmp_path / "nope.json")]))
    assert "nope.json" in line and "does not exist" in line


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "retrieval"], "takes its file as --results FILE"),
    (["eval", "retrieval", "--results", "x.json", "--k", "1,five"], "--k '1,five'"),
    (["eval", "merge", "a", "b"], "odqa eval needs --out"),
    (["eval", "merge", "a", "--out", "o"], "unknown eval action 'merge'"),  # the old shard merge is gone
    (["eval", "--pipeline", "p.yml", "--questions", "q.jsonl"], "odqa eval needs --out"),
    (["eval", "merge", "a", "--out", "o", "--results", "x.json"], "belong to `odqa eval retrieval"),
])
def test_eval_retrieval_usage_errors(capsys, argv, fragment):
    line = assert_one_error_line(capsys, main(argv))
    assert fragment in line


def test_help_loads_neither_torch_nor_a_trainer():
    # the parser takes its defaults from odqa.configs; `odqa --help` stays fast (was 2.3 s with torch)
    code = ("import sys; from odqa.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('odqa.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- hardening: nothing lost, nothing clobbered, every fixable cause one line ---------------------
def test_index_build_force_never_deletes_a_directory_odqa_did_not_make(capsys, tmp_path, corpus_jsonl, st_encoder):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("x")
    code = main(["index", "build", "--corpus", corpus_jsonl, "--out", str(precious), "--force",
                 "--encoder", st_encoder])
    line = assert_one_error_line(capsys, code)
    assert code == 2 and f"'{precious}' exists and is not made by odqa" in line and "--force" not in line
    assert (precious / "thesis.txt").read_text() == "x" and (precious / "sub").is_dir()


def test_a_pipeline_pointing_at_a_non_index_is_not_told_to_build_there(capsys, tmp_path, write_pipeline):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("x")
    path = write_pipeline(tmp_path, index_dir=etc)
    line = assert_one_error_line(capsys, main(["run", str(path), "--question", "Who wrote Hamlet?"]))
    assert f"'{etc}' is not an odqa index" in line and f"--out {etc}" not in line


@pytest.mark.parametrize("command", ["run", "eval"])
def test_an_out_inside_a_read_only_directory(capsys, tmp_path, warm, read_only_dir, command):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]), encoding="utf-8")
    out = read_only_dir / "odqa-test-out" / ("a.jsonl" if command == "run" else "run")
    argv = (["run", warm, "--questions", str(qfile), "--out", str(out)] if command == "run" else
            ["eval", "--pipeline", warm, "--questions", str(qfile), "--out", str(out)])
    code = main(argv)
    line = assert_one_error_line(capsys, code)
    assert code == 2 and "unexpected" not in line
    assert f"cannot use '{read_only_dir / 'odqa-test-out'}'" in line
    assert any(r in line for r in ("permission denied", "operation not permitted", "read-only"))


def test_a_read_only_odqa_home(capsys, tmp_path, write_pipeline, read_only_dir, monkeypatch):
    # a GGUF backbone is dequantized once into $ODQA_HOME/models; a home that cannot be written says so
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    path = write_pipeline(tmp_path, lm=str(gguf))
    monkeypatch.setenv("ODQA_HOME", str(read_only_dir / "odqa-home"))
    code = main(["ask", "Who wrote Hamlet?", "--pipeline", str(path)])
    line = assert_one_error_line(capsys, code)
    assert code == 2 and "unexpected" not in line
    assert f"$ODQA_HOME is {read_only_dir / 'odqa-home'}" in line and "set ODQA_HOME to a writable directory" in line


def test_os_errors_name_the_path_and_the_fix():
    import errno

    from odqa.errors import FileAccessError, from_os_error

    e = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/run/predictions.jsonl"))
    assert isinstance(e, FileAccessError) and e.exit_code == 2
    assert str(e) == ("cannot use '/data/run/predictions.jsonl': no space left on the device; free some disk space "
                      "or choose a path on another disk")
    e = from_os_error(PermissionError(errno.EACCES, "Permission denied", "/ro/x"))
    assert str(e) == "cannot use '/ro/x': permission denied; make it writable or choose a path you can write"


def test_two_evals_into_one_directory(capsys, tmp_path, warm, hold_lock):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:3]), encoding="utf-8")
    out = tmp_path / "run"
    pid = hold_lock(out).pid  # another `odqa eval ... --out run` still writing
    code = main(["eval", "--pipeline", warm, "--questions", str(qfile), "--out", str(out)])
    line = assert_one_error_line(capsys, code)
    assert f"'{out}' is being written by another odqa process (PID {pid} " in line
    assert not (out / "predictions.jsonl").exists()


def test_two_runs_into_one_file(capsys, tmp_path, warm, questions_file, hold_lock):
    out = tmp_path / "answers.jsonl"
    pid = hold_lock(out).pid
    line = assert_one_error_line(capsys, main(["run", warm, "--questions", str(questions_file), "--out", str(out)]))
    assert f"PID {pid}" in line and not out.exists()


def test_eval_out_that_is_not_an_eval_run(capsys, tmp_path, warm):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:3]), encoding="utf-8")
    out = tmp_path / "notes"
    out.mkdir()
    (out / "metrics.json").write_text("mine")
    line = assert_one_error_line(capsys, main(["eval", "--pipeline", warm, "--questions", str(qfile),
                                               "--out", str(out)]))
    assert f"'{out}' exists and is not made by odqa" in line and (out / "metrics.json").read_text() == "mine"


def test_run_out_that_is_not_a_run_file_is_left_alone(capsys, tmp_path, warm, questions_file):
    out = tmp_path / "thesis.txt"
    out.write_text("chapter one\nchapter two\n")
    line = assert_one_error_line(capsys, main(["run", warm, "--questions", str(questions_file), "--out", str(out)]))
    assert "is not an odqa run file" in line and out.read_text() == "chapter one\nchapter two\n"


def test_run_answers_around_empty_missing_and_non_string_questions(capsys, tmp_path, warm):
    path = tmp_path / "q.jsonl"
    rows = [QUESTIONS[0], {"id": "empty", "question": ""}, {"id": "missing"}, {"id": "number", "question": 7},
            {"id": "blank", "question": " \n\t"}, QUESTIONS[1]]
    path.write_text("".join(json.dumps(q) + "\n" for q in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["run", warm, "--questions", str(path), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["q1", "empty", "missing", "number", "blank", "q2"]
    assert [r.get("error_type") for r in records] == [None, "EmptyQuestionError", "QuestionTypeError",
                                                      "QuestionTypeError", "EmptyQuestionError", None]
    assert "got NoneType" in records[2]["error"] and "got int (7)" in records[3]["error"]
    assert isinstance(records[0]["answer"], str) and isinstance(records[5]["answer"], str)
    assert "4 could not be answered" in capsys.readouterr().err


def test_ask_normalises_whitespace(capsys, warm):
    assert main(["ask", "Who wrote Romeo and Juliet?", "--pipeline", warm, "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert main(["ask", "Who\n\nwrote\r\nRomeo and Juliet\n?\n\n", "--pipeline", warm, "--json"]) == 0
    messy = json.loads(capsys.readouterr().out)
    assert messy["question"] == "Who wrote Romeo and Juliet?" and messy["answer"] == clean["answer"]


@pytest.mark.parametrize("trainer", [["reader", "--train", "t.jsonl"], ["reranker", "--train", "t.jsonl"],
                                     ["recursive", "--mode", "one-pass"], ["idpt", "--mode", "prompt"]])
def test_two_trainers_into_one_artifact(capsys, tmp_path, hold_lock, trainer):
    out = tmp_path / "artifact"
    pid = hold_lock(out).pid
    line = assert_one_error_line(capsys, main(["train", *trainer, "--out", str(out)]))
    assert f"'{out}' is being written by another odqa process (PID {pid} " in line


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path, warm):
    # `odqa run ... --json | head -c 50`: no traceback, no "error:" line about a path '?'
    proc = subprocess.Popen([sys.executable, "-m", "odqa.cli", "run", warm, "--question", "Who wrote Hamlet?",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader goes away before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "error" not in err.lower() and "Traceback" not in err


def test_an_os_error_without_a_path_says_so():
    import errno

    from odqa.errors import from_os_error

    msg = str(from_os_error(OSError(errno.ENOSPC, "No space left on device")))
    assert msg == "an operating-system error: no space left on the device; free some disk space or choose a path " \
                  "on another disk" and "'?'" not in msg
