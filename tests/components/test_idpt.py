"""The IDPTLM component on tiny random models: every artifact kind, its errors, the YAML round
trip, the Python API and ``odqa run --task``. The generator itself: tests/lm/test_prompt_generator.py."""

from __future__ import annotations

import json

import pytest
import yaml
from haystack import Pipeline
from haystack.dataclasses import GeneratedAnswer

from odqa.components.idpt import IDPTLM, KIND
from odqa.errors import ArtifactMismatchError, PipelineConfigError, ResourceNotFoundError

TEXT = "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne."
LONG = " ".join(["Romeo and Juliet is a tragedy written by William Shakespeare about two young lovers."] * 3)


def test_component_answers_with_a_generator(generator_dir, tiny_lm):
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, max_new_tokens=3)
    out = lm.run(query=TEXT, task="topic")
    a = out["answers"][0]
    assert isinstance(a, GeneratedAnswer) and isinstance(a.data, str)
    assert a.meta["system"] == KIND and a.meta["task"] == "topic" and a.meta["template"] == "classify"
    assert 1 <= a.meta["new_tokens"] <= 3 and a.meta["prompt_ms"] >= 0
    assert a.meta["input_tokens"] > 5  # p(x) plus the rendered input
    assert lm.prompt_length == 5
    # a template by name, and a fully rendered input when there is no task
    assert lm.run(query=TEXT, task="topic/which")["answers"][0].meta["template"] == "which"
    assert lm.run(query="Question: Who wrote Hamlet?\nAnswer:")["answers"][0].meta["template"] == ""


def test_component_runs_every_system(tiny_lm, soft_prompt_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from odqa.artifacts import write_manifest

    frozen = IDPTLM(model=tiny_lm, max_new_tokens=2)
    assert frozen.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "frozen"
    assert frozen.prompt_length == 0
    soft = IDPTLM(model=tiny_lm, artifact=soft_prompt_dir, max_new_tokens=2)
    assert soft.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "soft_prompt"
    assert soft.prompt_length == 4
    tuned_dir = tmp_path / "tuned"
    AutoModelForCausalLM.from_pretrained(tiny_lm).save_pretrained(tuned_dir)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(tuned_dir)
    write_manifest(tuned_dir, {"kind": "finetuned_lm", "backbone": tiny_lm})
    tuned = IDPTLM(model=tiny_lm, artifact=str(tuned_dir), max_new_tokens=2)
    assert tuned.run(query=TEXT, task="closedbook")["answers"][0].meta["system"] == "finetuned_lm"
    with pytest.raises(ArtifactMismatchError, match="was made from .* set model to"):
        IDPTLM(model="smollm2-135m-instruct", artifact=str(tuned_dir)).warm_up()


def test_component_errors(tiny_lm, tiny_lm_plain, tmp_path, generator_dir):
    from odqa.errors import EmptyQuestionError
    from odqa.artifacts import write_manifest

    with pytest.raises(PipelineConfigError, match="unknown task 'poetry'"):
        IDPTLM(model=tiny_lm, task="poetry")
    with pytest.raises(PipelineConfigError, match="max_new_tokens must be"):
        IDPTLM(model=tiny_lm, max_new_tokens=0)
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, max_new_tokens=2)
    with pytest.raises(PipelineConfigError, match="has no template 'sonnet'"):
        lm.run(query=TEXT, task="topic/sonnet")
    with pytest.raises(EmptyQuestionError):
        lm.run(query="  ", task="topic")
    with pytest.raises(ResourceNotFoundError, match="does not exist"):
        IDPTLM(model=tiny_lm, artifact=str(tmp_path / "missing")).warm_up()
    other = tmp_path / "other"
    other.mkdir()
    write_manifest(other, {"kind": "reranker"})
    with pytest.raises(ArtifactMismatchError, match="is a 'reranker'; IDPTLM takes"):
        IDPTLM(model=tiny_lm, artifact=str(other)).warm_up()
    with pytest.raises(ArtifactMismatchError, match="trained for backbone"):
        IDPTLM(model=tiny_lm_plain, artifact=generator_dir).warm_up()  # another backbone


def test_to_dict_from_dict_and_yaml_round_trip(tiny_lm, generator_dir):
    lm = IDPTLM(model=tiny_lm, artifact=generator_dir, task="topic", max_new_tokens=3, max_input_tokens=64)
    data = lm.to_dict()
    assert data["init_parameters"] == {"model": tiny_lm, "artifact": generator_dir, "task": "topic",
                                       "max_new_tokens": 3, "max_input_tokens": 64, "dtype": "float32"}
    again = IDPTLM.from_dict(data)
    assert again.to_dict() == data
    pipe = Pipeline()
    pipe.add_component("lm", lm)
    loaded = Pipeline.loads(pipe.dumps(), allowed_modules=["odqa.*"])
    assert loaded.get_component("lm").to_dict() == data
    assert loaded.run({"query": TEXT, "task": "closedbook"})["lm"]["answers"][0].meta["task"] == "closedbook"


def _idpt_yaml(directory, tiny_lm, generator_dir):
    import os

    directory.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(generator_dir, directory)
    data = {"components": {"idpt": {"type": "odqa.components.idpt.IDPTLM", "init_parameters": {
        "model": tiny_lm, "artifact": rel, "task": None, "max_new_tokens": 2, "max_input_tokens": 128,
        "dtype": "float32"}}}, "connections": []}
    path = directory / "idpt.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_python_api_takes_a_task(tmp_path, tiny_lm, generator_dir, pipeline_yaml):
    import odqa

    qa = odqa.load(str(_idpt_yaml(tmp_path / "pipes", tiny_lm, generator_dir)))  # artifact path relative to the YAML
    a = qa.ask(TEXT, task="description")
    assert isinstance(a.answer, str) and a.meta["task"] == "description" and a.passages == []
    assert "idpt" in a.timings and "total" in a.timings
    with pytest.raises(PipelineConfigError, match="unknown task"):
        qa.ask(TEXT, task="poetry")
    with pytest.raises(PipelineConfigError, match="takes no task"):
        odqa.load(str(pipeline_yaml)).ask("Who wrote Romeo and Juliet?", task="topic")


def test_cli_run_with_a_task(tmp_path, tiny_lm, generator_dir, capsys):
    from odqa.cli import main

    path = _idpt_yaml(tmp_path / "pipes", tiny_lm, generator_dir)
    assert main(["run", "--pipeline", str(path), "--question", TEXT, "--task", "topic", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta"]["task"] == "topic" and out["question"] == TEXT
    assert main(["run", str(path), "--pipeline", str(path), "--question", TEXT]) == 2
    assert "name the pipeline once" in capsys.readouterr().err
    assert main(["run", "--pipeline", str(path), "--question", TEXT, "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
