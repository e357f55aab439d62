"""The evaluation harness on the tiny test pipeline: records, metrics, resume, shards, report, CLI."""

from __future__ import annotations

import json

import pytest

import odqa
from odqa import evaluation
from odqa.cli import main
from odqa.questions import Question

QUESTIONS = [
    Question(id="q1", question="Who wrote Romeo and Juliet?", answers=["William Shakespeare"]),
    Question(id="q2", question="What is the capital of Australia?", answers=["Canberra"]),
    Question(id="q3", question="Who painted the Mona Lisa?", answers=["Leonardo da Vinci"]),
    Question(id="q4", question="Which planet is known as the Red Planet?", answers=["Mars"]),
    Question(id="q1", question="Who wrote Romeo and Juliet?", answers=["William Shakespeare"]),  # repeat
]


@pytest.fixture(scope="module")
def qa(pipeline_yaml):
    return odqa.load(str(pipeline_yaml))


@pytest.fixture(scope="module")
def full_run(qa, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, evaluation.evaluate(qa, QUESTIONS, out, progress=False)


def test_records_and_metrics(full_run):
    out, metrics = full_run
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4"]  # the repeat is scored once
    r = records[0]
    assert set(r["stages"]) == {"bm25", "dense", "join"}
    assert r["stages"]["bm25"][0] is True  # BM25 puts the Romeo and Juliet passage first
    assert r["lm_input_recall"] == any(p["has_answer"] for p in r["read"])
    assert metrics["questions"] == 4
    assert set(metrics["stages"]["bm25"]) == {"top1", "top5"}  # the test pipeline retrieves 5
    for stage in metrics["stages"].values():
        assert stage["top1"] <= stage["top5"]
    expected_recall = 100 * sum(r["lm_input_recall"] for r in records) / 4
    assert metrics["lm_input_recall"] == pytest.approx(expected_recall)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "reader" in json.loads((out / "timings.json").read_text())


def test_killed_run_resumes_to_the_same_metrics(qa, full_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = evaluation.score_question
    calls = []

    def dies_on_third(qa_, q):
        calls.append(q.id)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(qa_, q)

    monkeypatch.setattr(evaluation, "score_question", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(qa, QUESTIONS, out, progress=False)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    with open(out / "predictions.jsonl", "ab") as fh:  # and a torn line, as a kill mid-write leaves
        fh.write(b'{"id": "q3", "quest')
    calls.clear()
    monkeypatch.setattr(evaluation, "score_question", lambda qa_, q: calls.append(q.id) or real(qa_, q))
    evaluation.evaluate(qa, QUESTIONS, out, progress=False)
    assert calls == ["q3", "q4"]  # nothing computed twice
    assert (out / "metrics.json").read_text() == (full_run[0] / "metrics.json").read_text()


def test_shards_merge_to_the_full_metrics(qa, full_run, tmp_path):
    dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(dirs):
        evaluation.evaluate(qa, QUESTIONS, d, shard=i, shards=2, progress=False)
    assert len((dirs[0] / "predictions.jsonl").read_text().splitlines()) == 2
    merged = evaluation.merge(dirs, tmp_path / "merged")
    assert merged == full_run[1]


def test_bad_shard(qa, tmp_path):
    with pytest.raises(odqa.errors.OdqaError, match="--shard must be in 0..1"):
        evaluation.evaluate(qa, QUESTIONS, tmp_path, shard=5, shards=2, progress=False)


def test_report_files(full_run):
    from odqa.report import write_report

    out, _ = full_run
    report = write_report(out, "test run", "odqa eval ...").read_text()
    assert "| bm25 |" in report and "LM-input recall" in report and "Command: `odqa eval ...`" in report
    for png in ("topk.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_and_merge(capsys, tmp_path, pipeline_yaml):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.id, "question": q.question, "answer": q.answers}) + "\n"
                             for q in QUESTIONS[:2]), encoding="utf-8")
    for i in range(2):
        assert main(["eval", "--pipeline", str(pipeline_yaml), "--questions", str(qfile),
                     "--out", str(tmp_path / f"s{i}"), "--shards", "2", "--shard", str(i)]) == 0
    assert "EM " in capsys.readouterr().out
    assert main(["eval", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["questions"] == 2
    assert (tmp_path / "m" / "report.md").exists()


def test_cli_eval_bad_questions_file(capsys, tmp_path, pipeline_yaml):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "Who?", "answer": ["x"]}\n{"question": "What?", "answer": []}\n')
    code = main(["eval", "--pipeline", str(pipeline_yaml), "--questions", str(qfile), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: ") and "q.jsonl:2:" in err and "empty answer list" in err


def test_without_stage(qa, tmp_path):
    no_dense = evaluation.without_stage(qa, "dense")
    assert "dense" not in dict(no_dense.pipeline.walk())
    metrics = evaluation.evaluate(no_dense, QUESTIONS[:2], tmp_path / "nd", progress=False)
    assert set(metrics["stages"]) == {"bm25", "join"}
    assert evaluation.without_stage(qa, "ranker") is None  # not in this pipeline
    with pytest.raises(odqa.errors.OdqaError, match="packer and the reader are needed"):
        evaluation.without_stage(qa, "reader")
    with pytest.raises(odqa.errors.OdqaError, match="'join' would have no documents left"):
        evaluation.without_stage(no_dense, "bm25")


def test_cli_ablate(capsys, tmp_path, pipeline_yaml):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.id, "question": q.question, "answer": q.answers}) + "\n"
                             for q in QUESTIONS[:2]), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["eval", "--pipeline", str(pipeline_yaml), "--questions", str(qfile), "--out", str(out),
                 "--ablate", "dense,ranker"]) == 0
    table = (out / "ablation.md").read_text()
    assert "| full pipeline |" in table and "| without dense |" in table
    assert "| without ranker | not in this pipeline |" in table
    assert (out / "without-dense" / "metrics.json").exists() and (out / "without-dense" / "report.md").exists()
