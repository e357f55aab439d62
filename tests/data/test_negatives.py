"""odqa.data.negatives: the readers (odqa jsonl, DPR json, NQ-open jsonl) and their errors, the atomic
writer, hard-negative mining on the tiny fixture index, and the `odqa data` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odqa.cli import main
from odqa.data.corpus import Passage
from odqa.errors import TextEncodingError, TrainingDataError
from odqa.metrics import has_answer
from odqa.data.cloze import cloze_split, make_cloze
from odqa.data.negatives import (
    Ctx, TrainExample, mine_hard_negatives, read_training_data, write_training_data,
)

from conftest import CORPUS

TEXT = {p["id"]: p["text"] for p in CORPUS}


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- readers -------------------------------------------------------------------------------------
def test_odqa_jsonl_round_trip(tmp_path):
    examples = [
        TrainExample("a", "Who wrote Romeo and Juliet?", ["William Shakespeare"],
                     positives=[Ctx("p0", "Romeo and Juliet", TEXT["p0"])],
                     hard_negatives=[Ctx("p1", "Canberra", TEXT["p1"])], synthetic=True,
                     source="cloze:tiny:p0", kind="ENTITY"),
        TrainExample("b", "Where is the Louvre?", ["Paris"], source="dpr:x.json"),
    ]
    path = write_training_data(tmp_path / "sub" / "train.jsonl", examples)
    assert read_training_data(path) == examples
    assert not list(path.parent.glob("*.tmp"))  # written through a temp file, renamed into place
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_dpr_json(tmp_path):
    data = [
        {"dataset": "nq", "question": "who painted the mona lisa", "answers": ["Leonardo da Vinci"],
         "positive_ctxs": [{"title": "Mona Lisa", "text": TEXT["p2"], "passage_id": "p2"}],
         "negative_ctxs": [{"title": "Mars", "text": TEXT["p4"], "passage_id": "p4"}],
         "hard_negative_ctxs": [{"title": "Tokyo", "text": TEXT["p16"], "passage_id": "p16"}]},
        # no hard negatives: fall back to negative_ctxs; a ctx without id keeps an empty one
        {"question": "capital of australia", "answers": ["Canberra"],
         "positive_ctxs": [{"title": "Canberra", "text": TEXT["p1"]}],
         "negative_ctxs": [{"title": "Sahara", "text": TEXT["p18"], "passage_id": 18}],
         "hard_negative_ctxs": []},
    ]
    path = _write(tmp_path / "nq-train.json", json.dumps(data, indent=1))
    a, b = read_training_data(path)
    assert (a.question, a.answers, a.synthetic, a.source) == (
        "who painted the mona lisa", ["Leonardo da Vinci"], False, "dpr:nq-train.json")
    assert a.positives == [Ctx("p2", "Mona Lisa", TEXT["p2"])]
    assert [c.id for c in a.hard_negatives] == ["p16"]
    assert b.positives == [Ctx("", "Canberra", TEXT["p1"])]
    assert b.hard_negatives == [Ctx("18", "Sahara", TEXT["p18"])]
    assert a.id != b.id


def test_nq_open_jsonl_and_mixed_lines(tmp_path):
    path = _write(tmp_path / "nq-open.jsonl", _lines(
        {"question": "who wrote romeo and juliet", "answer": ["William Shakespeare", "Shakespeare"]},
        "",
        {"id": "x", "question": "q two", "answers": ["a"], "synthetic": True, "source": "cloze:c:1"},
    ))
    nq, odqa_rec = read_training_data(path)
    assert nq.answers == ["William Shakespeare", "Shakespeare"]
    assert nq.positives == [] and nq.synthetic is False and nq.source == "nq-open:nq-open.jsonl"
    assert nq.id == "nq-open-1"  # the line number when there is no id
    assert (odqa_rec.id, odqa_rec.synthetic, odqa_rec.source) == ("x", True, "cloze:c:1")


@pytest.mark.parametrize("name, content, fragment", [
    ("bad.jsonl", _lines({"question": "q", "answer": ["a"]}, '{"question": "q", '), "bad.jsonl:2: invalid JSON"),
    ("bad.jsonl", _lines({"question": "q", "answer": ["a"]}, {"answers": ["a"]}), "bad.jsonl:2: missing or empty 'question'"),
    ("bad.jsonl", _lines({"question": "  ", "answers": ["a"]}), "bad.jsonl:1: missing or empty 'question'"),
    ("bad.jsonl", _lines({"question": "q"}), "bad.jsonl:1: missing 'answers'"),
    ("bad.jsonl", _lines({"question": "q", "answers": []}), "bad.jsonl:1: 'answers' is empty"),
    ("bad.jsonl", _lines({"question": "q", "answer": [" "]}), "bad.jsonl:1: 'answer' is empty"),
    ("bad.jsonl", _lines({"question": "q", "answers": [3]}), "'answers' must be a list of strings"),
    ("bad.jsonl", _lines({"question": "q", "answers": ["a"], "positives": [{"title": "t"}]}),
     "bad.jsonl:1: 'positives'[0] needs a 'text'"),
    ("bad.jsonl", _lines('["a list"]'), "bad.jsonl:1: expected a JSON object"),
    ("empty.jsonl", "", "no training examples in"),
    ("blank.jsonl", "\n  \n", "no training examples in"),
    ("empty.json", "[]", "no training examples in"),
    ("bad.json", '[\n{"question": "q", "answers": ["a"]},\n{"question": }\n]', "bad.json:3: invalid JSON"),
    ("bad.json", json.dumps([{"question": "q", "answers": ["a"]}, {"question": "q", "answers": []}]),
     "bad.json: entry 1: 'answers' is empty"),
    ("bad.json", json.dumps([{"question": "q", "answers": ["a"]}, "x"]), "bad.json: entry 1: expected a JSON object"),
    ("bad.json", json.dumps([{"question": "q", "answers": ["a"], "positive_ctxs": [{"title": "t"}]}]),
     "bad.json: entry 0: 'positive_ctxs'[0] needs a 'text'"),
    ("bad.json", json.dumps([{"answers": ["a"]}]), "bad.json: entry 0: missing or empty 'question'"),
])
def test_reader_errors_name_file_line_and_field(tmp_path, name, content, fragment):
    path = _write(tmp_path / name, content)
    with pytest.raises(TrainingDataError) as e:
        read_training_data(path)
    assert fragment in str(e.value)


def test_reader_non_utf8_names_the_line(tmp_path):
    jsonl = _write(tmp_path / "latin1.jsonl", _lines({"question": "q", "answer": ["a"]}).encode()
                   + '{"question": "caf\u00e9", "answer": ["a"]}\n'.encode("latin-1"))
    with pytest.raises(TextEncodingError, match=r"latin1.jsonl:2: not valid UTF-8.*iconv"):
        read_training_data(jsonl)
    dpr = _write(tmp_path / "latin1.json", b'[\n' + '{"question": "caf\u00e9", "answers": ["a"]}'.encode("latin-1")
                 + b"\n]")
    with pytest.raises(TextEncodingError, match=r"latin1.json:2: not valid UTF-8"):
        read_training_data(dpr)


def test_reader_missing_file(tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_training_data(tmp_path / "nope.jsonl")


# --- mining --------------------------------------------------------------------------------------
def test_mining_cloze_examples(flat_index):
    passages = [Passage(**p) for p in CORPUS]
    examples = make_cloze(passages, n=30, corpus_name="tiny")
    mined, stats = mine_hard_negatives(examples, flat_index, n=4, depth=30, progress=False)
    assert len(mined) == len(examples) == stats["kept"] == stats["examples"]
    assert stats["dropped_no_positive"] == 0 and stats["positives_mined"] == 0
    for before, after in zip(examples, mined):
        assert after.positives == before.positives  # given positives are kept
        assert 1 <= len(after.hard_negatives) <= 4
        pos_ids = {c.id for c in after.positives}
        for neg in after.hard_negatives:
            assert not has_answer(neg.text, after.answers)
            assert neg.id not in pos_ids
            assert neg.text == TEXT[neg.id]
        assert len({c.id for c in after.hard_negatives}) == len(after.hard_negatives)
    assert examples[0].hard_negatives == []  # the input is not modified
    assert stats["negatives"] == sum(len(e.hard_negatives) for e in mined)


def test_mining_fills_positives_for_nq_open_and_drops_the_unanswerable(flat_index):
    examples = [
        TrainExample("q1", "Who wrote Romeo and Juliet?", ["William Shakespeare"]),
        TrainExample("q2", "What is the capital of Australia?", ["Canberra"]),
        TrainExample("q3", "Who invented the zorblax?", ["Quentin Zorblaxian"]),
    ]
    mined, stats = mine_hard_negatives(examples, flat_index, n=3, depth=30, progress=False)
    assert [e.id for e in mined] == ["q1", "q2"]
    assert stats["dropped_no_positive"] == 1 and stats["positives_mined"] == 2
    assert [e.positives[0].id for e in mined] == ["p0", "p1"]
    for e in mined:
        assert has_answer(e.positives[0].text, e.answers)
        assert len(e.hard_negatives) == 3
        assert all(not has_answer(c.text, e.answers) and c.id != e.positives[0].id for c in e.hard_negatives)


def test_mining_keeps_given_negatives_that_lack_the_answer(flat_index):
    ex = TrainExample("d", "Who painted the Mona Lisa?", ["Leonardo da Vinci"],
                      positives=[Ctx("x", "Mona Lisa", TEXT["p2"])],
                      hard_negatives=[Ctx("n1", "Leo", "Leonardo da Vinci was a painter."), Ctx("n2", "Mars", TEXT["p4"])])
    (mined,), _ = mine_hard_negatives([ex], flat_index, n=2, depth=30, progress=False)
    # n1 has the answer and goes; n2 stays first; the positive's text (p2, under another id) is never a negative
    assert [c.id for c in mined.hard_negatives][0] == "n2"
    assert len(mined.hard_negatives) == 2
    assert all(c.text != TEXT["p2"] for c in mined.hard_negatives)


# --- the `odqa data` commands ---------------------------------------------------------------------
def test_cli_data_cloze(tmp_path, capsys, corpus_jsonl, flat_index):
    out = tmp_path / "data" / "cloze-tiny.jsonl"
    code = main(["data", "cloze", "--corpus", corpus_jsonl, "--out", str(out), "--n", "30",
                 "--index", flat_index, "--negatives", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    train, dev = out.with_name("cloze-tiny-synthetic.train.jsonl"), out.with_name("cloze-tiny-synthetic.dev.jsonl")
    by_split = {split: read_training_data(path) for split, path in (("train", train), ("dev", dev))}
    examples = by_split["train"] + by_split["dev"]
    for split, part in by_split.items():
        assert f"{split}: {len(part)} synthetic examples" in printed
        assert all(cloze_split(e) == split for e in part)
    assert "hard negatives:" in printed and "ENTITY" in printed
    assert all(e.synthetic and e.source.startswith("cloze:tiny:") and e.kind for e in examples)
    assert all(1 <= len(e.hard_negatives) <= 2 for e in examples)


def test_cli_data_negatives(tmp_path, capsys, flat_index):
    nq = _write(tmp_path / "nq.jsonl", _lines({"question": "Who wrote Romeo and Juliet?", "answer": ["Shakespeare"]},
                                               {"question": "Who invented the zorblax?", "answer": ["Quux Zorb"]}))
    out = tmp_path / "nq-mined.jsonl"
    assert main(["data", "negatives", "--train", str(nq), "--index", flat_index, "--out", str(out),
                 "--negatives", "2"]) == 0
    assert "1 dropped" in capsys.readouterr().out
    (e,) = read_training_data(out)
    assert e.positives[0].id == "p0" and len(e.hard_negatives) == 2


def test_cli_data_errors(tmp_path, capsys, corpus_jsonl, flat_index):
    bad = _write(tmp_path / "bad.jsonl", _lines({"question": "q", "answers": []}))
    line = _one_error_line(capsys, main(["data", "negatives", "--train", str(bad), "--index", flat_index,
                                         "--out", str(tmp_path / "o.jsonl")]))
    assert "bad.jsonl:1: 'answers' is empty" in line
    line = _one_error_line(capsys, main(["data", "cloze", "--corpus", corpus_jsonl, "--out", str(tmp_path / "c.txt")]))
    assert "must name a .jsonl file" in line
    line = _one_error_line(capsys, main(["data", "cloze", "--corpus", corpus_jsonl, "--out",
                                         str(tmp_path / "c.jsonl"), "--negatives", "3"]))
    assert "--negatives needs --index" in line
    synth = write_training_data(tmp_path / "s.jsonl", [TrainExample("a", "q", ["a"], synthetic=True)])
    line = _one_error_line(capsys, main(["data", "negatives", "--train", str(synth), "--index", flat_index,
                                         "--out", str(tmp_path / "mined.jsonl")]))
    assert "put 'synthetic' in the --out file name" in line


# --- real questions as training data ----------------------------------------------------------------
def test_examples_from_a_bundled_question_set_leave_out_the_benchmark():
    from odqa.data.questions import load_questions
    from odqa.data.negatives import examples_from_questions

    examples, stats = examples_from_questions("fanoutqa-closedbook:train", exclude="fanoutqa-wiki")
    benchmark = {(q.id, q.question) for q in load_questions("fanoutqa-wiki")}
    assert examples and stats["excluded"] > 0 and stats["unmatchable_answer"] > 0
    assert not benchmark & {(e.id, e.question) for e in examples}
    assert all(not e.synthetic and e.source == "fanoutqa-closedbook:train" for e in examples)
    assert all(a.lower() not in ("yes", "no") for e in examples for a in e.answers)
    assert stats["questions"] == len(examples) + stats["excluded"] + stats["unmatchable_answer"]


@pytest.mark.parametrize("answer, ok", [("yes", False), ("No", False), ("12", False), ("3.5", False),
                                        ("1969", True), ("Canberra", True), ("12 km", True)])
def test_distant_supervision_refuses_answers_that_match_anywhere(answer, ok):
    from odqa.data.negatives import _distant_answer_ok

    assert _distant_answer_ok(answer) is ok


def test_cli_data_negatives_from_a_question_set(tmp_path, capsys, flat_index):
    out = tmp_path / "real.jsonl"
    assert main(["data", "negatives", "--train", "fanoutqa-closedbook:dev", "--exclude", "fanoutqa-wiki",
                 "--index", flat_index, "--out", str(out), "--negatives", "1"]) == 0
    printed = capsys.readouterr()
    assert "questions kept" in printed.out and "excluded as in fanoutqa-wiki" in printed.out
    line = _one_error_line(capsys, main(["data", "negatives", "--train", str(tmp_path / "x.jsonl"), "--exclude",
                                         "fanoutqa-wiki", "--index", flat_index, "--out", str(out)]))
    assert "--exclude applies to a bundled question set" in line
