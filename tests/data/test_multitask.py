"""The multitask data: the P3/T0-style loader and its errors, templates, and the mixture builders
(on hand-made wiki records here; the bundled mixture itself is checked in the slow tests)."""

from __future__ import annotations

import json
import random

import pytest

from odqa.errors import PipelineConfigError, ResourceNotFoundError, TrainingDataError
from odqa.data import multitask as mt
from odqa.lm.tasks import TASKS, TOPICS, render
from odqa.data.multitask import read_multitask


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_reads_inputs_targets_and_task(tmp_path):
    path = _write(tmp_path / "mix.jsonl", [
        {"id": "a", "task": "topic", "inputs": "Text: x\nTopic:", "targets": "Arts"},
        {"task": "my_task", "inputs": "Q: y\nA:", "targets": "z", "answers": ["z", "zed"]},
    ])
    a, b = read_multitask(path)
    assert (a.id, a.task, a.inputs, a.targets, a.answers) == ("a", "topic", "Text: x\nTopic:", "Arts", ["Arts"])
    assert (a.cluster, a.metric, a.held_out) == ("classification", "accuracy", False)  # known task: its spec
    assert (b.task, b.cluster, b.metric, b.answers) == ("my_task", "other", "em", ["z", "zed"])
    assert b.id.endswith("mix.jsonl:2")


def test_pretokenized_columns_win_over_token_ids(tmp_path):
    path = _write(tmp_path / "p3.jsonl", [{"task": "t", "inputs": [3, 4, 5], "targets": [6],
                                           "inputs_pretokenized": "Is it good? ", "targets_pretokenized": " yes"}])
    (e,) = read_multitask(path)
    assert (e.inputs, e.targets) == ("Is it good?", "yes")


def test_default_task_for_a_one_task_file(tmp_path):
    path = _write(tmp_path / "one.jsonl", [{"inputs": "x", "targets": "y"}])
    assert read_multitask(path, task="super_glue_rte")[0].task == "super_glue_rte"


@pytest.mark.parametrize("record, message", [
    ({"task": "t", "targets": "y"}, "missing 'inputs' \\(or 'inputs_pretokenized'\\)"),
    ({"task": "t", "inputs": "x"}, "missing 'targets'"),
    ({"inputs": "x", "targets": "y"}, "missing 'task'"),
    ({"task": "t", "inputs": [1, 2], "targets": "y"}, "'inputs' holds token ids, not text; .*inputs_pretokenized"),
    ({"task": "t", "inputs": "  ", "targets": "y"}, "'inputs' must be a non-empty string"),
    ({"task": "t", "inputs": "x", "targets": "y", "answers": [1]}, "'answers' must be a list of strings"),
])
def test_malformed_records_name_the_line(tmp_path, record, message):
    path = _write(tmp_path / "bad.jsonl", [{"task": "t", "inputs": "ok", "targets": "ok"}, record])
    with pytest.raises(TrainingDataError, match=f"bad.jsonl:2: {message}"):
        read_multitask(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(ResourceNotFoundError, match="does not exist; build the bundled mixture"):
        read_multitask(tmp_path / "missing.jsonl")
    with pytest.raises(TrainingDataError, match="holds no examples"):
        read_multitask(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(TrainingDataError, match="empty.jsonl:1: invalid JSON"):
        read_multitask(_write(tmp_path / "empty.jsonl", ["{not json"]))
    (tmp_path / "dir").mkdir()
    with pytest.raises(TrainingDataError, match="is a directory; say which split"):
        read_multitask(tmp_path / "dir")
    with pytest.raises(TrainingDataError, match="holds neither train.jsonl nor a `datasets`"):
        read_multitask(tmp_path / "dir", "train")


def test_mixture_dir_split(tmp_path):
    _write(tmp_path / "dev.jsonl", [{"task": "t", "inputs": "x", "targets": "y"}])
    assert len(read_multitask(tmp_path, "dev")) == 1


def test_hf_dataset_dir_needs_datasets(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(TrainingDataError, match="needs the datasets package: pip install datasets"):
        read_multitask(tmp_path, "train")


# --- templates -----------------------------------------------------------------------------------
def test_render_every_task_and_template():
    for name, spec in TASKS.items():
        assert 2 <= len(spec.templates) <= 3
        for t in spec.templates:
            extra = {"question": "When?"} if name == "cloze" else {}
            chosen, text = render(name, "Some text.", t.name, **extra)
            assert chosen == t.name and "Some text." in text and "{" not in text
    assert "Arts, Biology" in render("topic", "x")[1]  # the label set is listed
    assert render("topic/which", "x")[0] == "which"
    name, text = render("cloze", "Mars is red. Question: What colour is Mars?")
    assert "Passage: Mars is red." in text and "Question: What colour is Mars?" in text


def test_render_errors():
    with pytest.raises(PipelineConfigError, match="unknown task 'poem'; the bundled mixture's tasks are"):
        render("poem", "x")
    with pytest.raises(PipelineConfigError, match="task 'topic' has no template 'x'; its templates are"):
        render("topic/x", "y")
    with pytest.raises(PipelineConfigError, match="needs a passage and a question"):
        render("cloze", "just a passage")


def test_clusters_and_held_out_kind():
    clusters = {s.cluster for s in TASKS.values()}
    assert {"classification", "generation", "qa", "naming"} <= clusters
    held = [s for s in TASKS.values() if s.held_out]
    assert [s.name for s in held] == ["subject"]
    assert not [s for s in TASKS.values() if s.cluster == held[0].cluster and not s.held_out]  # whole cluster out
    assert len(TOPICS) == 11 and "Uncategorized" not in TOPICS


# --- builders on hand-made records ----------------------------------------------------------
WIKI = [{"title": f"Thing {i} (band)" if i % 3 == 0 else f"Thing{i}",
         "text": f"Thing{i} is a thing number {i}. Thing{i} was made in {1900 + i} by people of the town.",
         "description": f"Thing number {i}", "topic": TOPICS[i % len(TOPICS)] if i % 7 else "Uncategorized"}
        for i in range(400)]


def test_splits_are_fixed_by_title_hash():
    splits = [mt.wiki_split(r["title"]) for r in WIKI]
    assert splits == [mt.wiki_split(r["title"]) for r in WIKI]  # deterministic
    assert {"train", "dev", "test"} == set(splits)
    assert 0.6 < splits.count("train") / len(splits) < 0.8


def test_wiki_tasks_are_deterministic_and_stay_in_their_split():
    for task in ("topic", "description", "subject"):
        a = mt._wiki_task_examples(task, WIKI, "test", 20, seed=0)
        b = mt._wiki_task_examples(task, WIKI, "test", 20, seed=0)
        assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
        assert a and len(a) <= 20
        titles = {e.id.split("-", 1)[1] for e in a}
        assert all(mt.wiki_split(t) == "test" for t in titles)
        assert {e.template for e in mt._wiki_task_examples(task, WIKI, "train", 60, 0)} == {
            t.name for t in TASKS[task].templates}
    topics = mt._wiki_task_examples("topic", WIKI, "train", 200, 0)
    assert all(e.answers[0] in TOPICS for e in topics)  # "Uncategorized" left out
    subject = mt._wiki_task_examples("subject", WIKI, "test", 5, 0)
    assert all(e.held_out and e.synthetic and "___" in e.inputs and e.answers[0] not in e.inputs for e in subject)


def test_mask_subject_and_shorten():
    assert mt.mask_subject("Albert Einstein was a physicist. Einstein's theory", "Albert Einstein") == \
        "___ was a physicist. ___ theory"
    assert mt.mask_subject("The alpaca is a camelid. Alpacas live in herds.", "Alpaca") == \
        "The ___ is a camelid. ___ live in herds."
    assert mt.mask_subject("Nothing here.", "Mars (planet)") is None
    text = " ".join(f"w{i}." if i % 10 == 9 else f"w{i}" for i in range(100))
    short = mt.shorten(text, 25)
    assert short.endswith("w19.") and len(short.split()) == 20
    assert mt.shorten("a b c", 25) == "a b c"


def test_write_and_read_back(tmp_path):
    rng = random.Random(0)
    ex = [mt._make("closedbook", "q1", {"text": "Who wrote Hamlet?"}, ["Shakespeare", "William Shakespeare"], rng)]
    path = mt.write_multitask(tmp_path / "x.jsonl", ex)
    (back,) = read_multitask(path)
    assert back.to_dict() == ex[0].to_dict()
