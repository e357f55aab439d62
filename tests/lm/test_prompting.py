"""odqa.lm.prompting: templates rendered with and without a chat template, answer cleaning."""

from __future__ import annotations

import pytest

from odqa.errors import PipelineConfigError
from odqa.lm.prompting import (
    EXAMPLES, INSTRUCTION, TEMPLATES, clean_answer, encode, encode_parts, encode_prefix, format_passages, get_template,
)

PASSAGES = [("Romeo and Juliet", "A tragedy by William Shakespeare."), ("", "An untitled passage.")]
QUESTION = "Who wrote Romeo and Juliet?"


def test_format_passages():
    assert format_passages(PASSAGES) == "Romeo and Juliet: A tragedy by William Shakespeare.\nAn untitled passage."
    assert format_passages([]) == ""


def test_get_template():
    assert set(TEMPLATES) == {"span-chat", "chat", "qa-completion", "qa"}
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


def test_render_qa(backbone):
    """The bare template for soft-prompted readers: passages, question, "Answer:" and nothing else."""
    tok = backbone.tokenizer
    template = get_template("qa")
    text = template.render(tok, QUESTION, PASSAGES)
    assert text == f"{format_passages(PASSAGES)}\nQuestion: {QUESTION}\nAnswer:"
    assert template.render(tok, QUESTION, []) == f"Question: {QUESTION}\nAnswer:"
    assert template.render_parts(tok, QUESTION, PASSAGES) == ("", text)
    assert encode_parts(tok, template, QUESTION, PASSAGES)[0] == []  # the tiny tokenizer adds no BOS


def _tokenizers(backbone, tiny_lm_plain):
    from odqa.lm.backbone import load_backbone

    return {"chat-template": backbone.tokenizer, "no-chat-template": load_backbone(tiny_lm_plain).tokenizer}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("tokenizer", ["chat-template", "no-chat-template"])
def test_render_parts(backbone, tiny_lm_plain, name, tokenizer):
    tok = _tokenizers(backbone, tiny_lm_plain)[tokenizer]
    template = get_template(name)
    prefixes = set()
    for question, passages in [(QUESTION, PASSAGES), ("What is the capital of Australia?", PASSAGES[:1]),
                               ("Why?", [])]:
        prefix, body = template.render_parts(tok, question, passages)
        assert prefix + body == template.render(tok, question, passages)
        assert question in body and all(text in body for _, text in passages)
        prefixes.add(prefix)
        prefix_ids, body_ids = encode_parts(tok, template, question, passages)
        assert prefix_ids == encode_prefix(tok, template)
        # the split is at a newline or a special token, where tokenizing the parts changes nothing
        assert prefix_ids + body_ids == encode(tok, template, prefix + body)
    assert len(prefixes) == 1  # the prefix depends on neither the question nor the passages


def test_prefix_holds_the_fixed_head(backbone):
    tok = backbone.tokenizer
    prefix, body = get_template("qa-completion").render_parts(tok, QUESTION, PASSAGES)
    assert prefix.startswith(INSTRUCTION) and prefix.endswith(f"Answer: {EXAMPLES[-1][2]}\n")
    assert body.startswith("\n" + format_passages(PASSAGES))
    prefix, body = get_template("span-chat").render_parts(tok, QUESTION, PASSAGES)
    assert prefix.endswith(f"{EXAMPLES[-1][2]}<|im_end|>\n") and prefix.count("<|im_start|>") == 1 + 2 * len(EXAMPLES)
    assert body.startswith("<|im_start|>user\nPassages:")
    prefix, body = get_template("chat").render_parts(tok, QUESTION, PASSAGES)
    assert prefix == f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n"


def test_chat_template_without_a_clean_split(backbone):
    """A chat template whose prompt does not start with its earlier turns gets an empty prefix."""
    import copy

    tok = copy.deepcopy(backbone.tokenizer)
    tok.chat_template = ("{{ messages | length }}|{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    template = get_template("span-chat")
    prefix, body = template.render_parts(tok, QUESTION, PASSAGES)
    assert prefix == "" and body == template.render(tok, QUESTION, PASSAGES) and body.startswith("8|system: ")


@pytest.mark.slow
def test_split_is_clean_on_the_bundled_tokenizer():
    """On SmolLM2's tokenizer, prefix ids + body ids are the ids of the whole prompt, for real questions."""
    import os

    from conftest import ORIGINAL_ODQA_HOME
    from odqa.data.corpus import read_corpus
    from odqa.lm.backbone import load_tokenizer
    from odqa.data.questions import load_questions

    saved = os.environ.get("ODQA_HOME")
    if ORIGINAL_ODQA_HOME is None:  # share the user's cache (the GGUF's tokenizer is read from it)
        os.environ.pop("ODQA_HOME", None)
    else:
        os.environ["ODQA_HOME"] = ORIGINAL_ODQA_HOME
    try:
        tok = load_tokenizer("smollm2-135m-instruct")  # the tokenizer only, not the weights
    finally:
        if saved is not None:
            os.environ["ODQA_HOME"] = saved
    passages = [(p.title, p.text) for p in read_corpus("wiki-vital")[:40]]
    for i, q in enumerate(load_questions("fanoutqa-wiki:dev")[:20]):
        for name in TEMPLATES:
            template = get_template(name)
            chosen = passages[i: i + i % 4]  # 0 to 3 passages
            prefix_ids, body_ids = encode_parts(tok, template, q.question, chosen)
            assert prefix_ids + body_ids == encode(tok, template, template.render(tok, q.question, chosen)), name


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
