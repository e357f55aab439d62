"""odqa.lm.prompting: templates rendered with and without a chat template, answer cleaning."""

from __future__ import annotations

import pytest

from odqa.errors import PipelineConfigError
from odqa.lm.prompting import EXAMPLES, INSTRUCTION, TEMPLATES, clean_answer, encode, format_passages, get_template

PASSAGES = [("Romeo and Juliet", "A tragedy by William Shakespeare."), ("", "An untitled passage.")]
QUESTION = "Who wrote Romeo and Juliet?"


def test_format_passages():
    assert format_passages(PASSAGES) == "Romeo and Juliet: A tragedy by William Shakespeare.\nAn untitled passage."
    assert format_passages([]) == ""


def test_get_template():
    assert set(TEMPLATES) == {"span-chat", "chat", "qa-completion"}
    assert get_template("span-chat").examples and get_template("span-chat").chat
    with pytest.raises(PipelineConfigError) as e:
        get_template("fancy")
    assert "fancy" in str(e.value) and "qa-completion" in str(e.value)


def test_messages():
    msgs = get_template("span-chat").messages(QUESTION, PASSAGES)
    assert msgs[0] == {"role": "system", "content": INSTRUCTION}
    assert len(msgs) == 2 + 2 * len(EXAMPLES)
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(EXAMPLES)
    assert msgs[-1]["role"] == "user"
    assert msgs[-1]["content"].startswith("Passages:\nRomeo and Juliet: ")
    assert msgs[-1]["content"].endswith(f"\n\nQuestion: {QUESTION}")
    closed_book = get_template("chat").messages(QUESTION, [])
    assert closed_book[-1]["content"] == f"Question: {QUESTION}" and len(closed_book) == 2


def test_render_with_chat_template(backbone):
    tok = backbone.tokenizer
    text = get_template("span-chat").render(tok, QUESTION, PASSAGES)
    assert text.startswith("<|im_start|>system\n" + INSTRUCTION)
    assert text.endswith(f"Question: {QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>assistant") == len(EXAMPLES) + 1
    ids = encode(tok, get_template("span-chat"), text)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 * len(EXAMPLES) + 3


def test_render_without_chat_template(tiny_lm_plain):
    from odqa.lm.backbone import load_backbone

    tok = load_backbone(tiny_lm_plain).tokenizer
    text = get_template("chat").render(tok, QUESTION, PASSAGES)
    assert text.startswith(f"system: {INSTRUCTION}\nuser: Passages:\n")
    assert text.endswith(f"Question: {QUESTION}\nassistant:")


def test_render_completion(backbone):
    text = get_template("qa-completion").render(backbone.tokenizer, QUESTION, PASSAGES)
    assert text.startswith(INSTRUCTION + "\n\n")
    for ctx, q, a in EXAMPLES:
        assert f"{ctx}\nQuestion: {q}\nAnswer: {a}\n" in text
    assert text.endswith(f"An untitled passage.\nQuestion: {QUESTION}\nAnswer:")


@pytest.mark.parametrize(
    "raw, clean",
    [
        (" William Shakespeare.\nHe also wrote Hamlet.", "William Shakespeare"),
        ("Answer: the Himalayas", "the Himalayas"),
        ("A: 1969", "1969"),
        ('"July 20, 1969"', "July 20, 1969"),
        ("\u201cradioactivity\u201d", "radioactivity"),
        ("and so on...", "and so on..."),
        ("", ""),
        ("\n\nParis", "Paris"),
    ],
)
def test_clean_answer(raw, clean):
    assert clean_answer(raw) == clean
