"""Slow tests: the real bundled models, corpus, benchmark and default index.

They use ``indexes/wiki-vital`` (``make test`` builds it first) and the user's
``$ODQA_HOME`` cache of the dequantized backbone, not the fast tests' private one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import user_odqa_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
INDEX = REPO / "indexes" / "wiki-vital"
PIPELINES = REPO / "pipelines"


@pytest.fixture(scope="module", autouse=True)
def real_cache():
    """Share the dequantized backbone cache with the user's runs (saves ~30 s per session)."""
    with user_odqa_home():
        yield


@pytest.fixture(scope="module")
def default_index() -> Path:
    if not (INDEX / "manifest.json").exists():
        pytest.fail(f"{INDEX} is missing; build it with `make index` (make test does this first)")
    return INDEX


@pytest.fixture(scope="module")
def qa(default_index):
    import odqa

    return odqa.load(PIPELINES / "frozen_reader.yml")


def test_bundled_corpus_and_benchmark_sizes():
    from odqa.data.corpus import read_corpus
    from odqa.data.questions import load_questions

    assert len(read_corpus("wiki-vital")) == 10_033
    questions = load_questions("fanoutqa-wiki")
    assert len(questions) == 363
    assert len({q.id for q in questions}) == 351
    assert sum(q.answer_in_evidence for q in questions) == 82
    splits = [load_questions(f"fanoutqa-wiki:{s}") for s in ("train", "dev", "test")]
    assert sum(len(s) for s in splits) == 363
    roots = [{q.root_id for q in s} for s in splits]
    assert not (roots[0] & roots[1] or roots[0] & roots[2] or roots[1] & roots[2])

    closed = load_questions("fanoutqa-closedbook")
    assert len(closed) == 1822 and all(q.answers and q.answers[0].strip() for q in closed)
    closed_splits = [load_questions(f"fanoutqa-closedbook:{s}") for s in ("train", "dev", "test")]
    assert sum(len(s) for s in closed_splits) == 1822
    # a root question's sub-questions land in the same split in both sets
    wiki_split = {q.root_id: i for i, s in enumerate(splits) for q in s}
    assert all(wiki_split.get(q.root_id, i) == i for i, s in enumerate(closed_splits) for q in s)


def test_default_index_manifest(default_index):
    manifest = json.loads((default_index / "manifest.json").read_text())
    assert manifest["count"] == 10_033
    assert manifest["encoder"] == "minilm-l6" and manifest["dim"] == 384
    assert manifest["faiss"]["metric"] == "inner_product"
    assert manifest["corpus_hash"].startswith("sha256:")


def test_default_pipeline_answers_shakespeare(qa):
    result = qa.ask("Who wrote Romeo and Juliet?")
    assert "shakespeare" in result.answer.lower()
    assert "Romeo and Juliet" in [p.title for p in result.passages]
    assert {"bm25", "dense", "join", "packer", "reader", "total"} <= set(result.timings)
    assert 0.0 < result.score <= 1.0
    budget = result.meta["budget"]
    assert budget["prompt_tokens"] + budget["max_new_tokens"] <= budget["context_length"]


def test_cli_ask_prints_answer_and_source(default_index):
    proc = subprocess.run(
        [sys.executable, "-m", "odqa.cli", "ask", "Who wrote Romeo and Juliet?"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Shakespeare" in proc.stdout
    assert "Romeo and Juliet" in proc.stdout  # the source title


def test_cli_empty_question_is_one_line(default_index):
    proc = subprocess.run([sys.executable, "-m", "odqa.cli", "ask", ""], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")


RANKED = ("frozen_reader_ranked.yml", "frozen_reader_ranked_query.yml")


@pytest.mark.parametrize("name", ["frozen_reader_smollm2.yml", "frozen_reader_bm25.yml", "frozen_reader_dense.yml",
                                  *RANKED, "frozen_reader_zeroshot.yml"])
def test_other_bundled_pipelines(name, default_index):
    import odqa

    result = odqa.load(PIPELINES / name).ask("In which city is the Eiffel Tower?")
    assert "Eiffel Tower" in [p.title for p in result.passages]
    # a short span, not a sentence (right or wrong: quality is measured in eval/RESULTS.md)
    assert 0 < len(result.answer.split()) <= 5
    assert ("ranker" in result.timings) == (name in RANKED)


@pytest.mark.parametrize("name", ["frozen_reader.yml", "frozen_reader_float32.yml"])
def test_batched_answers_are_the_single_answers(default_index, name):
    """20 dev questions answered one by one and in batches of 8 (the bundled backbone): the same
    answers, token for token; the default's int8 reader gives the same scores too, bit for bit."""
    import odqa
    from odqa.data.questions import load_questions

    qa = odqa.load(PIPELINES / name)
    questions = [q.question for q in load_questions("trivia-wiki:dev")[:20]]
    alone = qa.ask_many(questions, progress=False)
    batched = qa.ask_many(questions, progress=False, batch_size=8)
    assert [a.meta["raw"] for a in batched] == [a.meta["raw"] for a in alone]
    assert [a.meta["new_tokens"] for a in batched] == [a.meta["new_tokens"] for a in alone]
    assert [[p.id for p in a.passages] for a in batched] == [[p.id for p in a.passages] for a in alone]
    if name == "frozen_reader.yml":
        assert [a.score for a in batched] == [a.score for a in alone]


def test_default_reader_is_prompt_tuned(qa):
    """The shipped soft prompt is loaded and the prefix cache holds its keys and values."""
    reader = qa.pipeline.get_component(qa.reader)
    reader.warm_up()
    assert reader.template == "qa" and reader._soft is not None and reader._soft.length == 100
    a = qa.ask("Who wrote Romeo and Juliet?")
    assert a.meta["prompt_tokens"] == a.meta["budget"]["prompt_tokens"] + 100


def test_question_longer_than_budget(qa):
    from odqa.errors import QuestionTooLongError

    with pytest.raises(QuestionTooLongError, match="shorten the question"):
        qa.ask("Who wrote " + "the play that everybody knows " * 200 + "?")


@pytest.fixture(scope="module")
def dev24(qa, tmp_path_factory):
    """The default pipeline's evaluation of the first 24 fanoutqa-wiki:dev questions, in batches of 8
    (the answers alone would be the same: test_batched_answers_are_the_single_answers):
    ``(metrics, prediction records)``."""
    from odqa.data.questions import load_questions
    from odqa.eval.harness import evaluate

    out = tmp_path_factory.mktemp("dev24") / "run"
    questions = load_questions("fanoutqa-wiki:dev", require_answers=True)[:24]
    metrics = evaluate(qa, questions, out, progress=False, batch_size=8)
    return metrics, [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_answers_are_spans_not_sentences(dev24):
    """The reader's prompt's job: short answers, not sentences."""
    _, records = dev24
    assert len(records) == 24
    # the zero-shot chat templates give spans 8-10% of the time on dev (bench/results/reader_prompts.md)
    assert sum(len(r["prediction"].split()) <= 5 for r in records) >= 15


# Pinned numbers, as Pyserini pins its regressions: the default pipeline with its reader in float32
# (frozen_reader_float32.yml) on the first 24 fanoutqa-wiki:dev questions. Float32 answers have been
# the same on every CPU and library (MKL, oneDNN) measured; the default's int8 reader rounds each
# activation, so a last-bit difference between CPU libraries moves some of its answers (11 of these
# 24 were the same through MKL and through oneDNN on one machine, session 19; EM 4.17 and 8.33), and
# its numbers are not pinned. After an intended change, record them again with
#   odqa eval --pipeline pipelines/frozen_reader_float32.yml --questions fanoutqa-wiki:dev --limit 24 --out /tmp/pin --json
PINNED = {"questions": 24, "em": 4.17, "f1": 9.39, "lm_input_recall": 4.17}


def test_pinned_numbers_of_the_float32_reader(default_index, tmp_path):
    import odqa
    from odqa.data.questions import load_questions
    from odqa.eval.harness import evaluate

    questions = load_questions("fanoutqa-wiki:dev", require_answers=True)[:24]
    metrics = evaluate(odqa.load(PIPELINES / "frozen_reader_float32.yml"), questions, tmp_path / "run",
                       progress=False, batch_size=8)
    assert {k: metrics[k] for k in PINNED} == pytest.approx(PINNED, abs=0.005)


@pytest.mark.parametrize("module", ["odqa.components.packing", "odqa.components.readers",
                                    "odqa.components.rankers", "odqa.components.retrievers"])
def test_docstring_examples_run(module, default_index, monkeypatch):
    import doctest
    import importlib

    monkeypatch.chdir(REPO)  # the examples name repository paths (indexes/, pipelines/)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_trivia_wiki_works_in_eval(default_index, tmp_path, capsys):
    """(Training on it: tests/training/test_slow_training.py.)"""
    from odqa.cli import main

    pipeline = str(PIPELINES / "frozen_reader.yml")
    assert main(["eval", "--pipeline", pipeline, "--questions", "trivia-wiki:dev", "--limit", "3",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 3
