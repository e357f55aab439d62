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
``qa``             bare plain text for soft-prompted readers: the passages (one
                   ``Title: text`` per line), then "Question: ...\nAnswer:". No
                   instruction and no examples: a learned soft prompt replaces them.

Every prompt is split into a fixed *prefix* that depends on neither the question nor the
passages (BOS, instruction, worked examples; for chat templates the system turn and the
example turns) and a per-question *body*. The reader runs the frozen LM over the prefix
(and any soft prompt) once per process and reuses its keys and values
(:mod:`odqa.lm.generation`). The reader's input is defined as ``prefix_ids + body_ids``
(:func:`encode_parts`), counted the same way by the packer, so packing stays exact. The
split falls just after a newline (or an end-of-turn special token), where the bundled
SmolLM2 tokenizer gives the same ids as tokenizing the whole prompt at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from odqa.errors import PipelineConfigError, QuestionTooLongError

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
    instruction: bool = True

    def messages(self, question: str, passages: list[tuple[str, str]]) -> list[dict]:
        msgs = [{"role": "system", "content": INSTRUCTION}] if self.instruction else []
        if self.examples:
            for ctx, q, a in EXAMPLES:
                msgs.append({"role": "user", "content": f"Passages:\n{ctx}\n\nQuestion: {q}"})
                msgs.append({"role": "assistant", "content": a})
        msgs.append({"role": "user", "content": _user_turn(passages, question)})
        return msgs

    def render(self, tokenizer, question: str, passages: list[tuple[str, str]]) -> str:
        """The full prompt text; generation continues right after it."""
        return "".join(self.render_parts(tokenizer, question, passages))

    def render_parts(self, tokenizer, question: str, passages: list[tuple[str, str]]) -> tuple[str, str]:
        """``(prefix, body)`` with ``prefix + body == render(...)``; the prefix is the same for every question."""
        if self.chat:
            return self._chat_parts(tokenizer, self.messages(question, passages))
        head = [INSTRUCTION, ""] if self.instruction else []
        if self.examples:
            for ctx, q, a in EXAMPLES:
                head += [ctx, f"Question: {q}", f"Answer: {a}", ""]
        tail = [ctx] if (ctx := format_passages(passages)) else []
        tail.append(f"Question: {question}")
        body = "\n".join(tail) + "\nAnswer:"
        if not head:
            return "", body
        # split after the last example's single newline, not after the blank line: "\n" + "\nTitle"
        # tokenizes like "\n\nTitle" for byte-level BPE, while a trailing "\n\n" would merge into one token
        return "\n".join(head), "\n" + body

    def _chat_parts(self, tokenizer, msgs: list[dict]) -> tuple[str, str]:
        if not getattr(tokenizer, "chat_template", None):
            # models without a chat template get the same turns as plain text
            lines = [f"{m['role']}: {m['content']}\n" for m in msgs]
            return "".join(lines[:-1]), lines[-1] + "assistant:"
        full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        try:  # the turns before the question's, rendered alone, are the prefix if the full prompt starts with them
            prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - some chat templates refuse a conversation that ends on another turn
            prefix = ""
        if not (isinstance(prefix, str) and full.startswith(prefix)):
            prefix = ""
        return prefix, full[len(prefix):]


TEMPLATES = {
    "span-chat": Template("span-chat", chat=True, examples=True),
    "chat": Template("chat", chat=True, examples=False),
    "qa-completion": Template("qa-completion", chat=False, examples=True),
    "qa": Template("qa", chat=False, examples=False, instruction=False),
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
    """Token ids of a rendered text, tokenized whole. Chat templates write their own special tokens.

    The reader's input is :func:`encode_parts`, not this; the two agree when the split is clean.
    """
    return tokenizer(text, add_special_tokens=not template.chat)["input_ids"]


def encode_parts(tokenizer, template: Template, question: str,
                 passages: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """``(prefix_ids, body_ids)``: the reader's input is exactly ``prefix_ids + body_ids``.

    Special tokens the tokenizer adds (BOS) belong to the prefix; the body never gets any.
    """
    prefix, body = template.render_parts(tokenizer, question, passages)
    return _encode_prefix(tokenizer, template, prefix), tokenizer(body, add_special_tokens=False)["input_ids"]


def encode_prefix(tokenizer, template: Template) -> list[int]:
    """The prefix ids alone (they do not depend on the question)."""
    prefix, _ = template.render_parts(tokenizer, "?", [])
    return _encode_prefix(tokenizer, template, prefix)


def _encode_prefix(tokenizer, template: Template, prefix: str) -> list[int]:
    return tokenizer(prefix, add_special_tokens=not template.chat)["input_ids"]


# --- the reader-prompt contract --------------------------------------------------------------------
@dataclass(frozen=True)
class ReaderPrompt:
    """What the reader reads, in tokens; the packer budgets with the same value, so what it packs
    is exactly what fits (paper, Section 3: fill the LM's window greedily, best passage first).

    ``context_length`` holds the soft prompt, the rendered prompt (prefix + question + passages)
    and ``max_new_tokens`` of room for the answer.

        prompt = ReaderPrompt("qa", context_length=384, max_new_tokens=16, soft_prompt_tokens=100)
        prompt.budget(tok, "Who wrote Hamlet?")         # tokens left for passages
        prefix_ids, body_ids = prompt.encode(tok, "Who wrote Hamlet?", [("Hamlet", "Hamlet is ...")])
    """

    template: str
    context_length: int
    max_new_tokens: int
    soft_prompt_tokens: int = 0

    @property
    def limit(self) -> int:
        """The most prompt tokens (prefix + body) the window holds."""
        return self.context_length - self.max_new_tokens - self.soft_prompt_tokens

    def encode(self, tokenizer, question: str, passages: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """``(prefix_ids, body_ids)`` of the reader's input (:func:`encode_parts`)."""
        return encode_parts(tokenizer, get_template(self.template), question, passages)

    def length(self, tokenizer, question: str, passages: list[tuple[str, str]]) -> int:
        """Prompt tokens of ``question`` with ``passages`` (the soft prompt not included)."""
        return sum(len(ids) for ids in self.encode(tokenizer, question, passages))

    def budget(self, tokenizer, question: str) -> int:
        """Tokens left for passages once the prompt, question, soft prompt and answer room are
        counted; :class:`~odqa.errors.QuestionTooLongError` when the question alone does not fit."""
        base = self.length(tokenizer, question, [])
        if base > self.limit:
            words = len(tokenizer(question, add_special_tokens=False)["input_ids"])
            raise QuestionTooLongError(
                f"the question is {words} tokens long, but the reader's budget leaves room for at most "
                f"{max(self.limit - (base - words), 0)} (context_length={self.context_length}, "
                f"max_new_tokens={self.max_new_tokens}, soft prompt={self.soft_prompt_tokens}); shorten the "
                "question or raise context_length")
        return self.limit - base
