"""Recursive closed-book readers on the tiny random Llama: the connector, the two passes, YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from haystack import Pipeline

from conftest import HIDDEN
from odqa.components.recursion import (
    NeuralRecursionReader, TextualRecursionReader, check_sampling, closed_book_parts, dedup_candidates,
)
from odqa.lm.connector import Connector, first_pass_states
from odqa.errors import ArtifactMismatchError, PipelineConfigError, QuestionTooLongError, ResourceNotFoundError
from odqa.lm.soft_prompt import SoftPrompt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recursion_dir(tiny_lm, tmp_path_factory) -> str:
    """A neural recursion artifact for ``tiny_lm``: a connector with non-zero weights + a 3-vector prompt."""
    torch.manual_seed(5)
    out = tmp_path_factory.mktemp("artifacts") / "recursion"
    SoftPrompt(torch.randn(3, HIDDEN)).save(out, {"backbone": tiny_lm, "kind": "neural_recursion"})
    connector = Connector(HIDDEN, 8, scale=0.5)
    torch.nn.init.normal_(connector.up.weight, std=0.2)
    connector.save(out)
    return str(out)


@pytest.fixture(scope="module")
def second_prompt_dir(tiny_lm, tmp_path_factory) -> str:
    torch.manual_seed(6)
    out = tmp_path_factory.mktemp("artifacts") / "second"
    SoftPrompt(torch.randn(2, HIDDEN)).save(out, {"backbone": tiny_lm})
    return str(out)


def test_candidates_are_deduplicated_by_normalized_text_in_order():
    raw = ["Paris", " paris.", "The Paris", "", "Lyon\nmore text", '"Lyon"', "Answer: Nice"]
    assert dedup_candidates(raw) == ["Paris", "Lyon", "Nice"]
    assert dedup_candidates([]) == []


@pytest.mark.parametrize("n, temperature, top_p, message", [
    (0, 0.7, 0.9, "num_candidates must be an integer of at least 1, got 0"),
    (2.5, 0.7, 0.9, "num_candidates must be an integer"),
    (4, 0.0, 0.9, "temperature must be above 0"),
    (4, -1.0, 0.9, "temperature must be above 0"),
    (4, 0.7, 0.0, r"top_p must be in \(0, 1\], got 0.0"),
    (4, 0.7, 1.5, r"top_p must be in \(0, 1\], got 1.5"),
])
def test_sampling_settings_are_validated_with_clear_errors(n, temperature, top_p, message, soft_prompt_dir,
                                                           second_prompt_dir):
    with pytest.raises(PipelineConfigError, match=message):
        check_sampling(n, temperature, top_p)
    with pytest.raises(PipelineConfigError, match=message):
        TextualRecursionReader(soft_prompt_dir, second_prompt_dir, num_candidates=n, temperature=temperature,
                               top_p=top_p)


def test_closed_book_input_has_candidate_lines_before_the_question(backbone):
    tok = backbone.tokenizer
    prefix, body = closed_book_parts(tok, "Who painted the Mona Lisa?", ["Leonardo", "Raphael"])
    assert tok.decode(prefix + body) == "Candidate: Leonardo\nCandidate: Raphael\nQuestion: Who painted the Mona Lisa?\nAnswer:"
    prefix, body = closed_book_parts(tok, "Who painted the Mona Lisa?")
    assert tok.decode(prefix + body) == "Question: Who painted the Mona Lisa?\nAnswer:"


# --- textual recursion ----------------------------------------------------------------------------
def test_textual_reader_samples_dedups_and_feeds_pass_two(tiny_lm, soft_prompt_dir, second_prompt_dir):
    reader = TextualRecursionReader(soft_prompt_dir, second_prompt_dir, model=tiny_lm, num_candidates=5,
                                    temperature=1.5, top_p=1.0, max_new_tokens=3)
    seen = {}
    real_second = reader.second_pass

    def spy(query, candidates):
        seen["candidates"] = candidates
        return real_second(query, candidates)

    reader.second_pass = spy
    answer = reader.run(query="Who wrote Romeo and Juliet?")["answers"][0]
    cands = answer.meta["candidates"]
    assert seen["candidates"] == cands  # pass 2 read exactly pass 1's deduplicated candidates
    assert 1 <= len(cands) <= 5 and len({c.lower() for c in cands}) == len(cands)
    assert answer.documents == [] and isinstance(answer.data, str) and 0.0 <= answer.meta["score"] <= 1.0
    # the cost counts 5 sampled sequences over the input, and pass 2 over its own
    n_in1 = reader._soft1.length + len(sum(closed_book_parts(reader._backbone.tokenizer, answer.query), []))
    assert answer.meta["tokens_processed"] >= 5 * n_in1 + answer.meta["prompt_tokens"]
    # seeded per question: the same candidates again, in any order of questions
    reader.run(query="What is the capital of Australia?")
    assert reader.sample_candidates("Who wrote Romeo and Juliet?")[0] == cands


def test_textual_reader_refuses_a_too_long_question(tiny_lm, soft_prompt_dir, second_prompt_dir):
    reader = TextualRecursionReader(soft_prompt_dir, second_prompt_dir, model=tiny_lm, context_length=12)
    with pytest.raises(QuestionTooLongError, match="over the limit of 12"):
        reader.run(query="Who wrote Romeo and Juliet and where did the two young lovers live?")


# --- neural recursion -----------------------------------------------------------------------------
def test_neural_pass_two_receives_exactly_the_connector_output(tiny_lm, soft_prompt_dir, recursion_dir):
    reader = NeuralRecursionReader(soft_prompt_dir, recursion_dir, model=tiny_lm, max_new_tokens=3)
    reader.warm_up()
    model, tok = reader._backbone.model, reader._backbone.tokenizer
    query = "Who painted the Mona Lisa?"
    calls = []
    hook = model.base_model.register_forward_pre_hook(  # the decoder: greedy decoding runs its own head after it
        lambda mod, args, kwargs: calls.append(kwargs.get("inputs_embeds")), with_kwargs=True)
    try:
        answer = reader.run(query=query)["answers"][0]
    finally:
        hook.remove()
    prefix, body = closed_book_parts(tok, query)
    first_ids = tok(answer.meta["first_answer"], add_special_tokens=False)["input_ids"] if answer.meta["first_answer"] else []
    states = first_pass_states(model, reader._soft1, prefix, body, first_ids)
    assert states.shape == (len(body) + len(first_ids), HIDDEN) == (answer.meta["connector_positions"], HIDDEN)
    expected = torch.cat([reader._connector(states), model.get_input_embeddings()(torch.tensor(body))])
    pass2 = [e for e in calls if e is not None and e.shape[1] == expected.shape[0]]
    assert pass2, "pass 2 never ran on [connector(h1) ; question]"
    assert torch.allclose(pass2[-1][0], expected, atol=1e-6)


def test_neural_first_pass_states_are_the_question_and_answer_positions(backbone, soft_prompt_dir, tiny_lm):
    soft = SoftPrompt.load(soft_prompt_dir, tiny_lm, HIDDEN)
    prefix, body = closed_book_parts(backbone.tokenizer, "Who wrote Moby-Dick?")
    states = first_pass_states(backbone.model, soft, prefix, body, [5, 6])
    full = backbone.model.get_decoder()(
        inputs_embeds=soft(backbone.model.get_input_embeddings()(torch.tensor([prefix + body + [5, 6]])))
    ).last_hidden_state[0]
    assert torch.allclose(states, full[-(len(body) + 2):], atol=1e-6)


def test_neural_reader_refuses_another_pass_one_prompt(tiny_lm, soft_prompt_dir, recursion_dir, tmp_path):
    import json
    import shutil

    art = tmp_path / "recursion"
    shutil.copytree(recursion_dir, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["first_prompt_sha256"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatchError, match="another pass-1 prompt"):
        NeuralRecursionReader(soft_prompt_dir, str(art), model=tiny_lm).warm_up()


def test_neural_reader_refuses_a_recursion_dir_without_connector(tiny_lm, soft_prompt_dir, second_prompt_dir):
    with pytest.raises(ResourceNotFoundError, match="train one with `odqa train recursive --mode neural`"):
        NeuralRecursionReader(soft_prompt_dir, second_prompt_dir, model=tiny_lm).warm_up()


# --- YAML round trips and the API -----------------------------------------------------------------
@pytest.mark.parametrize("factory", [
    lambda sp, sp2, rd: TextualRecursionReader(sp, sp2, num_candidates=3, temperature=0.5, top_p=0.8, seed=4,
                                               max_new_tokens=7, context_length=200),
    lambda sp, sp2, rd: NeuralRecursionReader(sp, rd, max_new_tokens=5, context_length=99),
])
def test_components_round_trip_through_yaml(factory, soft_prompt_dir, second_prompt_dir, recursion_dir):
    comp = factory(soft_prompt_dir, second_prompt_dir, recursion_dir)
    pipe = Pipeline()
    pipe.add_component("reader", comp)
    again = Pipeline.loads(pipe.dumps(), allowed_modules=["odqa.*"]).get_component("reader")
    assert type(again) is type(comp) and again.to_dict() == comp.to_dict()
    params = comp.to_dict()["init_parameters"]
    assert all(getattr(again, k) == v for k, v in params.items())  # every init param stored under its name


@pytest.mark.parametrize("name, reader_type", [
    ("closed_book.yml", "FrozenLMReader"), ("closed_book_gemma.yml", "FrozenLMReader"),
    ("closed_book_gemma_fewshot.yml", "FrozenLMReader"),
    ("recursive_textual.yml", "TextualRecursionReader"), ("recursive_neural.yml", "NeuralRecursionReader"),
    ("recursive_neural_nopretrain.yml", "NeuralRecursionReader"),
    ("recursive_neural_pre10.yml", "NeuralRecursionReader"),
])
def test_shipped_pipelines_load_and_round_trip(name, reader_type):
    from odqa.api import load_pipeline

    pipe = load_pipeline(REPO / "pipelines" / name)  # no warm-up: the artifacts are not read
    reader = pipe.get_component("reader")
    assert type(reader).__name__ == reader_type
    for key in ("soft_prompt", "first_prompt", "second_prompt", "recursion"):
        value = getattr(reader, key, None)
        if value:
            assert Path(value).is_absolute() and Path(value).parent == REPO / "pipelines" / "artifacts"
    again = Pipeline.loads(pipe.dumps(), allowed_modules=["odqa.*"])
    assert again.get_component("reader").to_dict() == reader.to_dict()


def test_recursive_pipelines_answer_through_the_api(tmp_path, tiny_lm, soft_prompt_dir, second_prompt_dir,
                                                     recursion_dir):
    import odqa

    readers = {
        "textual": {"type": "odqa.components.recursion.TextualRecursionReader",
                    "init_parameters": {"first_prompt": soft_prompt_dir, "second_prompt": second_prompt_dir,
                                        "model": tiny_lm, "num_candidates": 2, "max_new_tokens": 3}},
        "neural": {"type": "odqa.components.recursion.NeuralRecursionReader",
                   "init_parameters": {"first_prompt": soft_prompt_dir, "recursion": recursion_dir,
                                       "model": tiny_lm, "max_new_tokens": 3}},
    }
    for name, spec in readers.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({"components": {"reader": spec}, "connections": []}))
        answer = odqa.load(path).ask("Who painted the Mona Lisa?")
        assert isinstance(answer.answer, str) and answer.passages == []
        assert answer.meta["tokens_processed"] > answer.meta["prompt_tokens"] and "reader" in answer.timings
