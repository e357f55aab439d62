"""bench/serve_load.py end to end, briefly: it starts ``odqa serve`` on the tiny test pipeline
(batching on, then off), loads it with 1 and 2 clients for about a second each, stops it, and
writes its table. Only the report's shape and bookkeeping are checked, never speed."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
QUESTIONS = ["Who wrote Romeo and Juliet?", "What is the capital of Australia?", "Who painted the Mona Lisa?",
             "Which planet is known as the Red Planet?", "Who discovered penicillin?"]


@pytest.fixture
def serve_load(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import their sibling _report
    return importlib.import_module("serve_load")


def _table(report: str) -> list[list[str]]:
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| batching")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


def test_the_load_test_reports_every_setting(serve_load, pipeline_yaml, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS), encoding="utf-8")
    out = tmp_path / "serve_load.md"
    assert serve_load.main(["--pipeline", str(pipeline_yaml), "--clients", "1,2", "--seconds", "1",
                            "--questions", str(questions), "--out", str(out)]) == 0

    report = out.read_text(encoding="utf-8")
    assert "Command: `python " in report and "CPU cores" in report
    rows = _table(report)
    assert [(r[0].split(" ")[0], r[1]) for r in rows] == [("off", "1"), ("off", "2"), ("on", "1"), ("on", "2")]
    for batching, clients, answers, per_second, p50, p95, p99, errors, mean_batch, same in rows:
        assert int(answers) > 0 and float(per_second) > 0
        assert float(p50) <= float(p95) <= float(p99)
        assert errors == "0"
        assert same == f"{answers}/{answers}"  # batching changes no answer
        if batching == "off":
            assert mean_batch == "1.0"


def test_client_counts_are_checked(serve_load):
    assert serve_load.client_counts("1,4,16") == [1, 4, 16]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(Exception, match="client counts"):
            serve_load.client_counts(bad)
