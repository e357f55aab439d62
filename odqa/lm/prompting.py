"""Reader prompt templates: question + packed passages -> the text the frozen LM reads.

The packer and the reader render through the same template, so the packer's token
budget is measured on exactly what the reader will see.

Templates (chosen on the dev split, see bench/reader_prompts.py):

``qa-completion``  plain text: an instruction, three worked examples (passage, question,
                   short answer), then the passages and "Question: ... Answer:". The
                   default: on dev it makes SmolLM2-135M-Instruct answer with a span
                   79.5% of the time (EM 10.2 at a 384-token window).
``span-chat``      the same instruction and examples as chat turns; the instruct model
                   still answers in sentences (span rate 8%, EM 0.0).
``chat``           chat turns with the instruction only (span rate 10%, EM 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass

from odqa.errors import PipelineConfigError

INSTRUCTION = (
    "Answer the question using the passages. Reply with the answer only: a short phrase "
    "copied from the passages, not a sentence."
)

# Worked examples, written for odqa (not taken from any benchmark).
EXAMPLES: list[tuple[str, str, str]] = [
    (
        "Mount Everest: Mount Everest is Earth's highest mountain above sea level, located in the "
        "Mahalangur Himal sub-range of the Himalayas.",
        "In which mountain range is Mount Everest?",
        "the Himalayas",
    ),
    (
        "Apollo 11: Apollo 11 was the American spaceflight that first landed humans on the Moon, "
        "on July 20, 1969.",
        "When did Apollo 11 land on the Moon?",
        "July 20, 1969",
    ),
    (
        "Marie Curie: Marie Curie was a Polish and naturalised-French physicist and chemist who "
        "conducted pioneering research on radioactivity.",
        "What did Marie Curie research?",
        "radioactivity",
    ),
]


def format_passages(passages: list[tuple[str, str]]) -> str:
    """``[(title, text), ...]`` -> one ``Title: text`` line per passage."""
    return "\n".join(f"{t}: {x}" if t else x for t, x in passages)


def _user_turn(passages: list[tuple[str, str]], question: str) -> str:
    ctx = format_passages(passages)
    return f"Passages:\n{ctx}\n\nQuestion: {question}" if ctx else f"Question: {question}"


@dataclass(frozen=True)
class Template:
    name: str
    chat: bool
    examples: bool

    def messages(self, question: str, passages: list[tuple[str, str]]) -> list[dict]:
        msgs = [{"role": "system", "content": INSTRUCTION}]
        if self.examples:
            for ctx, q, a in EXAMPLES:
                msgs.append({"role": "user", "content": f"Passages:\n{ctx}\n\nQuestion: {q}"})
                msgs.append({"role": "assistant", "content": a})
        msgs.append({"role": "user", "content": _user_turn(passages, question)})
        return msgs

    def render(self, tokenizer, question: str, passages: list[tuple[str, str]]) -> str:
        """The full prompt text; generation continues right after it."""
        if self.chat:
            msgs = self.messages(question, passages)
            if getattr(tokenizer, "chat_template", None):
                return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            # models without a chat template get the same turns as plain text
            return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        parts = [INSTRUCTION, ""]
        if self.examples:
            for ctx, q, a in EXAMPLES:
                parts += [ctx, f"Question: {q}", f"Answer: {a}", ""]
        ctx = format_passages(passages)
        if ctx:
            parts.append(ctx)
        parts.append(f"Question: {question}")
        return "\n".join(parts) + "\nAnswer:"


TEMPLATES = {
    "span-chat": Template("span-chat", chat=True, examples=True),
    "chat": Template("chat", chat=True, examples=False),
    "qa-completion": Template("qa-completion", chat=False, examples=True),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise PipelineConfigError(f"unknown reader template '{name}'; supported templates are: {list(TEMPLATES)}")
    return TEMPLATES[name]


def clean_answer(text: str) -> str:
    """A span, not a sentence: first line, no surrounding quotes or final full stop."""
    line = text.strip().split("\n", 1)[0].strip()
    for prefix in ("Answer:", "answer:", "A:"):
        if line.startswith(prefix):
            line = line[len(prefix) :].strip()
    line = line.strip('"\u201c\u201d ')
    if line.endswith(".") and not line.endswith(".."):
        line = line[:-1].rstrip()
    return line


def encode(tokenizer, template: Template, text: str) -> list[int]:
    """Token ids of a rendered prompt. Chat templates write their own special tokens."""
    return tokenizer(text, add_special_tokens=not template.chat)["input_ids"]
