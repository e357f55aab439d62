"""odqa.data.questions: user question files (jsonl) and the fixed split hashing. No bundled benchmark."""

from __future__ import annotations

import importlib.util

import pytest

import odqa.resources as resources
from odqa.errors import InputFormatError, ResourceNotFoundError, TextEncodingError
from odqa.data.questions import Question, load_questions, read_questions_file, split_of



def test_read_questions_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"id": "a", "question": "Who?", "answers": ["X", "Y"]}\n'
        "\n"
        '{"question": "What?", "answer": "Z"}\n'
        '{"id": 5, "question": "Where?"}\n',
        encoding="utf-8",
    )
    qs = load_questions(str(path))
    assert qs == [
        Question(id="a", question="Who?", answers=["X", "Y"]),
        Question(id="3", question="What?", answers=["Z"]),  # no id -> line number; one answer string -> list
        Question(id="5", question="Where?", answers=[]),
    ]
    assert qs[0].to_dict()["answers"] == ["X", "Y"]


@pytest.mark.parametrize("line", ['{"question": ', '"just a string"'])
def test_malformed_line_names_the_line(tmp_path, line):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok?"}\n{"question": "fine?"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"q\.jsonl:3:"):
        read_questions_file(path)


@pytest.mark.parametrize("line, kept", [('{"id": 2, "answer": ["x"]}', None), ('{"question": 3, "answer": ["x"]}', 3),
                                        ('{"question": "  ", "answer": ["x"]}', "  ")])
def test_bad_question_text_fails_a_scored_set_but_not_a_run(tmp_path, line, kept):
    # scoring (require_answers) needs every question; a run keeps it, to answer it with an error record
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok?", "answer": ["y"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"q\.jsonl:2: .*question"):
        read_questions_file(path, require_answers=True)
    assert read_questions_file(path)[1].question == kept


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "ok?"}\n{"question": "\xff?"}\n')
    with pytest.raises(TextEncodingError, match=":2:"):
        read_questions_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ResourceNotFoundError, match="does not exist"):
        load_questions(str(tmp_path / "none.jsonl"))


def test_dpr_csv(tmp_path):
    path = tmp_path / "nq-test.csv"
    path.write_text('who wrote hamlet\t["William Shakespeare", "Shakespeare"]\n'
                    "where is paris\t['France']\n", encoding="utf-8")
    qs = read_questions_file(path, require_answers=True)
    assert [(q.id, q.question, q.answers) for q in qs] == [
        ("1", "who wrote hamlet", ["William Shakespeare", "Shakespeare"]), ("2", "where is paris", ["France"])]


CSV_OK = 'ok question\t["x"]'
JSONL_OK = '{"question": "ok?", "answer": ["y"]}'


@pytest.mark.parametrize("name, first, line, message", [
    ("nq-test.csv", CSV_OK, "who wrote hamlet", "no tab"),
    ("nq-test.csv", CSV_OK, "who wrote hamlet\t[oops", "not a JSON list"),
    ("nq-test.csv", CSV_OK, "who wrote hamlet\t[]", "empty answer list"),
    ("nq-test.csv", CSV_OK, "\t[\"x\"]", "question is empty"),
    ("nq-open.jsonl", JSONL_OK, '{"answer": ["x"]}', "missing 'question'"),
    ("nq-open.jsonl", JSONL_OK, '{"question": "q?", "answer": ["x"]', "invalid JSON"),
    ("nq-open.jsonl", JSONL_OK, '{"question": "q?", "answer": []}', "empty answer list"),
    ("nq-open.jsonl", JSONL_OK, '{"question": "q?"}', "missing 'answer'"),
    ("nq-open.jsonl", JSONL_OK, '{"question": "q?", "answer": [1, 2]}', "list of strings"),
])
def test_bad_line_for_evaluation_is_named(tmp_path, name, first, line, message):
    path = tmp_path / name
    path.write_text(first + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputFormatError) as e:
        load_questions(str(path), require_answers=True)
    assert f"{name}:2:" in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_non_utf8_csv_names_the_line(tmp_path):
    path = tmp_path / "nq-test.csv"
    path.write_bytes(b'ok\t["x"]\nw\xe9rd\t["y"]\n')
    with pytest.raises(TextEncodingError, match=":2:"):
        read_questions_file(path, require_answers=True)


def test_split_of_is_stable_and_balanced():
    assert split_of("root-1") == split_of("root-1")
    splits = [split_of(f"root-{i}") for i in range(2000)]
    assert set(splits) == {"train", "dev", "test"}
    share = {s: splits.count(s) / len(splits) for s in ("train", "dev", "test")}
    assert share["train"] == pytest.approx(0.4, abs=0.05)
    assert share["dev"] == pytest.approx(0.3, abs=0.05)
    assert share["test"] == pytest.approx(0.3, abs=0.05)


def test_unknown_split_is_reported_first(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(resources.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "fanoutqa" else real(name, *a, **k))
    with pytest.raises(ResourceNotFoundError) as e:
        load_questions("fanoutqa-wiki:bogus")
    assert "unknown split 'bogus'" in str(e.value)


def _write(path, rows):
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mixture_reads_each_part_in_order(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "a1", "question": "Who?", "answers": ["x"]}])
    b = _write(tmp_path / "b.jsonl", [{"id": "b1", "question": "What?", "answers": ["y"]},
                                      {"id": "b2", "question": "When?", "answers": ["z"]}])
    qs = load_questions(f"{a}+{b}", require_answers=True)
    assert [q.id for q in qs] == ["a1", "b1", "b2"]


def test_file_with_plus_in_its_name_is_one_file(tmp_path):
    path = _write(tmp_path / "a+b.jsonl", [{"id": "q", "question": "Who?", "answers": ["x"]}])
    assert [q.id for q in load_questions(str(path))] == ["q"]


def test_mixture_with_an_empty_part_is_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "a1", "question": "Who?", "answers": ["x"]}])
    with pytest.raises(ResourceNotFoundError, match="empty part; write A\\+B"):
        load_questions(f"{a}+")
