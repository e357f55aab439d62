"""The evaluation harness on the tiny test pipeline: records, metrics, resume, report, CLI (the Ray engine:
tests/test_ray_engine.py)."""

from __future__ import annotations

import json

import pytest

import odqa
from odqa.eval import harness as evaluation
from odqa.errors import OdqaError
from odqa.cli import main
from odqa.data.questions import Question

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



def test_batched_run_gives_the_same_records_and_resumes(qa, full_run, tmp_path, monkeypatch):
    """--batch-size 3: the same records (timings aside) and metrics; a kill in the second batch
    keeps the first batch's records, and the resumed run answers only the rest."""
    out = tmp_path / "batched"
    real = qa.ask_many_with_outputs
    calls = []

    def dies_on_second_batch(questions, batch_size=8, every_stage=True):
        calls.append(list(questions))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(questions, batch_size, every_stage)

    monkeypatch.setattr(qa, "ask_many_with_outputs", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(qa, QUESTIONS, out, progress=False, batch_size=3)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    calls.clear()
    monkeypatch.setattr(qa, "ask_many_with_outputs", lambda *a, **k: calls.append(list(a[0])) or real(*a, **k))
    evaluation.evaluate(qa, QUESTIONS, out, progress=False, batch_size=3)
    assert [len(c) for c in calls] == [1]  # only the fourth question is answered again
    assert (out / "metrics.json").read_text() == (full_run[0] / "metrics.json").read_text()

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k != "timings"}
                for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert records(out) == records(full_run[0])

def test_report_files(full_run):
    from odqa.eval.report import write_report

    out, _ = full_run
    report = write_report(out, "test run", "odqa eval ...").read_text()
    assert "| bm25 |" in report and "LM-input recall" in report and "Command: `odqa eval ...`" in report
    for png in ("topk.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval(capsys, tmp_path, pipeline_yaml):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.id, "question": q.question, "answer": q.answers}) + "\n"
                             for q in QUESTIONS[:2]), encoding="utf-8")
    args = ["eval", "--pipeline", str(pipeline_yaml), "--questions", str(qfile), "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "EM " in capsys.readouterr().out
    assert main(args + ["--json"]) == 0  # a rerun resumes: nothing left to answer
    assert json.loads(capsys.readouterr().out.strip())["questions"] == 2
    assert (tmp_path / "run" / "report.md").exists()


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


# --- has_answer follows DPR: the passage text, not its title ----------------------------------
def test_answer_only_in_the_title_does_not_count(qa):
    from haystack import Document

    docs = [Document(content="Neil Armstrong walked on the Moon.", meta={"title": "Moon landing"}),
            Document(content="The Moon landing was in 1969.", meta={"title": "Apollo 11"})]
    assert evaluation._flags(docs, ["Moon landing"]) == [False, True]

    # end to end: the passage titled "Moon landing" (p20) is retrieved, but its text lacks the answer
    q = Question(id="m", question="Who was the first person to walk on the Moon?", answers=["Moon landing"])
    _, outputs = qa.ask_with_outputs(q.question)
    assert "p20" in [d.id for d in outputs["bm25"]["documents"]]
    record = evaluation.score_question(qa, q)
    assert not any(any(flags) for flags in record["stages"].values())
    assert not any(p["has_answer"] for p in record["read"]) and record["lm_input_recall"] is False


# --- odqa eval retrieval: DPR retriever-output files -------------------------------------------
def ctx(text=None, title="t", flag=None):
    c = {"id": "x", "title": title, "score": 1.0}
    if text is not None:
        c["text"] = text
    if flag is not None:
        c["has_answer"] = flag
    return c


# answers at rank 1, rank 3 and nowhere (q3's answer is only in a title, which does not count)
DPR_RESULTS = [
    {"question": "q1", "answers": ["Paris"], "ctxs": [ctx("Paris is in France.", flag=True), ctx("no", flag=False),
                                                      ctx("no", flag=False), ctx("no", flag=False),
                                                      ctx("no", flag=False), ctx("no", flag=False)]},
    {"question": "q2", "answers": ["Red Planet", "Mars"], "ctxs": [ctx("Venus"), ctx("Jupiter"), ctx("Mars is red.")]},
    {"question": "q3", "answers": ["Bob Dylan"], "ctxs": [ctx("a singer", title="Bob Dylan", flag=True), ctx("b")]},
]


def write_results(tmp_path, data, name="dpr_results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_retrieval_eval_numbers(tmp_path):
    from odqa.eval import retrieval as retrieval_eval

    metrics = retrieval_eval.evaluate_file(write_results(tmp_path, DPR_RESULTS), progress=False)
    assert metrics["questions"] == 3
    assert metrics["mean_ctxs"] == round(11 / 3, 2)
    assert metrics["topk"] == {"top1": 33.33, "top5": 66.67}
    assert metrics["skipped_k"] == [20, 100]  # at most 6 ctxs per question
    # 7 ctxs have both text and a flag; q3's title-only flag is the one odqa disagrees with
    assert metrics["has_answer_flags"] == {"checked": 7, "disagree": 1}
    assert not (tmp_path / "metrics.json").exists()  # nothing written without out


def test_retrieval_eval_falls_back_to_the_flag_without_text(tmp_path):
    from odqa.eval import retrieval as retrieval_eval

    data = [{"question": "q", "answers": ["x"], "ctxs": [ctx(flag=False), ctx(flag=True)]},
            {"question": "r", "answers": ["y"], "ctxs": [ctx(flag=False), ctx("y here", flag=False)]}]
    metrics = retrieval_eval.evaluate_file(write_results(tmp_path, data), ks=(1, 2), progress=False)
    assert metrics["topk"] == {"top1": 0.0, "top2": 100.0}
    assert metrics["has_answer_flags"] == {"checked": 1, "disagree": 1}


def test_retrieval_eval_writes_metrics_report_and_plot(tmp_path):
    from odqa.eval import retrieval as retrieval_eval

    out = tmp_path / "run"
    metrics = retrieval_eval.evaluate_file(write_results(tmp_path, DPR_RESULTS), out, ks=(1, 3, 5),
                                           command="odqa eval retrieval --results dpr_results.json", progress=False)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["topk"] == {"top1": 33.33, "top3": 66.67, "top5": 66.67}
    report = (out / "report.md").read_text()
    assert "| 1 | 33.3 |" in report and "| 3 | 66.7 |" in report and "| 5 | 66.7 |" in report
    assert "Command: `odqa eval retrieval --results dpr_results.json`" in report
    assert "disagrees with the file's own flag on 1 of 7 ctxs" in report
    assert (out / "topk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))


def test_retrieval_topk_curve():
    from odqa.eval.retrieval import topk_curve

    assert topk_curve([1, 3, None, 2], 4) == [25.0, 50.0, 75.0, 75.0]


def test_retrieval_eval_error_types(tmp_path):
    from odqa.eval import retrieval as retrieval_eval
    from odqa.errors import ResourceNotFoundError, TextEncodingError

    with pytest.raises(ResourceNotFoundError, match="nope.json"):
        retrieval_eval.load_results(tmp_path / "nope.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(TextEncodingError, match="latin1.json:1: not valid UTF-8"):
        retrieval_eval.load_results(bad)
    with pytest.raises(odqa.errors.InputFormatError, match="--k"):
        retrieval_eval.parse_ks("1,five")
    assert retrieval_eval.parse_ks("20, 1") == (20, 1)


def test_closed_book_report_has_no_retrieval_plot(tmp_path):
    from odqa.eval.report import write_report

    record = {"id": "q1", "question": "Who wrote Romeo and Juliet?", "answers": ["William Shakespeare"],
              "prediction": "Shakespeare", "em": 0.0, "f1": 0.67, "stages": {},
              "timings": {"reader": 0.2, "total": 0.2}}
    (tmp_path / "predictions.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"questions": 1, "stages": {}, "lm_input_recall": 0.0,
                                                       "answer_lost_to_packing": 0.0, "em": 0.0, "f1": 66.67}))
    (tmp_path / "timings.json").write_text(json.dumps({"reader": {"median_ms": 200.0, "mean_ms": 200.0},
                                                       "total": {"median_ms": 200.0, "mean_ms": 200.0}}))
    report = write_report(tmp_path, "closed-book run", "odqa eval --pipeline closed_book.yml").read_text()
    assert "No retrieval stage: the pipeline answers closed-book." in report and "topk.png" not in report
    assert not (tmp_path / "topk.png").exists() and (tmp_path / "latency.png").exists()


def test_a_run_resumes_only_with_the_pipeline_that_made_it(qa, tmp_path, write_pipeline):
    out = tmp_path / "run"
    evaluation.evaluate(qa, QUESTIONS[:2], out, progress=False)
    key = json.loads((out / "run.json").read_text())
    assert key == evaluation.run_key(qa) and key["pipeline_sha256"] and key["artifacts"]  # the index's manifest
    evaluation.evaluate(qa, QUESTIONS, out, progress=False)  # the same pipeline resumes
    other = odqa.load(str(write_pipeline(tmp_path / "other", top_k=3)))
    message = r"holds predictions made by another pipeline \(changed: the pipeline's settings; .*pass a new --out"
    with pytest.raises(odqa.errors.OdqaError, match=message + r", or delete .*predictions.jsonl"):
        evaluation.evaluate(other, QUESTIONS, out, progress=False)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4  # nothing was added


def test_the_run_key_sees_a_module_retrained_at_the_same_path(tmp_path):
    from types import SimpleNamespace

    art = tmp_path / "artifacts" / "recursive-neural"
    art.mkdir(parents=True)
    (art / "manifest.json").write_text('{"steps": 10}')
    spec = {"components": {"reader": {"init_parameters": {"recursion": str(art), "model": "smollm2-135m-instruct"}}}}
    qa = SimpleNamespace(source="neural.yml", pipeline=SimpleNamespace(to_dict=lambda: spec))
    out = tmp_path / "run"
    evaluation.check_run_key(out, evaluation.run_key(qa), resuming=False)
    (art / "manifest.json").write_text('{"steps": 200}')
    message = "changed: the trained modules or indexes recursive-neural; that run used neural.yml"
    with pytest.raises(odqa.errors.OdqaError, match=message):
        evaluation.check_run_key(out, evaluation.run_key(qa), resuming=True)
    evaluation.check_run_key(out, evaluation.run_key(qa), resuming=False)  # a fresh run takes the new key
    assert json.loads((out / "run.json").read_text())["artifacts"]["recursive-neural"]


def test_compare_two_runs_question_by_question(tmp_path, capsys):
    from odqa.cli import main

    def run(name, ems):
        d = tmp_path / name
        d.mkdir()
        rows = [{"id": f"q{i}", "em": e, "f1": e, "lm_input_recall": True} for i, e in enumerate(ems)]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return d

    a, b = run("a", [0, 0, 1, 0]), run("b", [1, 0, 1, 1, 1])  # b has one extra question: left out
    c = evaluation.compare(a, b)
    assert c["questions"] == 4 and c["em"]["a"] == 25.0 and c["em"]["b"] == 75.0 and c["em"]["diff"] == 50.0
    assert c["em"]["low"] <= 50.0 <= c["em"]["high"] and c["lm_input_recall"]["diff"] == 0.0
    assert main(["eval", "compare", str(a), str(b)]) == 0
    assert "4 shared questions" in capsys.readouterr().out
    with pytest.raises(OdqaError, match="holds no predictions.jsonl"):
        evaluation.compare(a, tmp_path / "nowhere")
