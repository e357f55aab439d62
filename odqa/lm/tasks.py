"""ID-PT's tasks (paper Section 2): each task's prompt templates, and rendering an input with one.

The templates are what the frozen LM reads at inference (``IDPTLM(task=...)``) as much as in
training, so they live here, beside the other prompt formats, not with the trainer. The
mixture built from them is :mod:`odqa.data.multitask`.

    render("topic", "The alpaca is a domesticated camelid ...")   # -> ("classify", "Classify the topic ...")
    render("cloze/read", "PASSAGE", question="Who ...?")
"""

from __future__ import annotations

from dataclasses import dataclass

from odqa.errors import PipelineConfigError

# the 11 Wikipedia topics of the bundled corpus ("Uncategorized" is left out)
TOPICS = (
    "Arts", "Biology and health sciences", "Everyday life", "Geography", "History", "Mathematics", "People",
    "Philosophy and religion", "Physical sciences", "Society and social sciences", "Technology",
)



@dataclass(frozen=True)
class TaskTemplate:
    """One prompt template of a task: ``input`` is a format string over the example's fields."""

    name: str
    input: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    cluster: str
    metric: str  # "accuracy" | "em" | "f1": the task's primary score
    templates: tuple[TaskTemplate, ...]
    held_out: bool = False
    synthetic: bool = False


TOPIC_CHOICES_FIELD = "choices"

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("topic", "classification", "accuracy", (
        TaskTemplate("classify", "Classify the topic of this Wikipedia paragraph.\nParagraph: {text}\n"
                                 "Topics: {choices}\nTopic:"),
        TaskTemplate("which", "{text}\n\nWhich of these topics is the text about? {choices}\nAnswer:"),
        TaskTemplate("area", "Name the subject area of the text ({choices}).\nText: {text}\nSubject area:"),
    )),
    TaskSpec("description", "generation", "f1", (
        TaskTemplate("short", "Write a short description, a few words, of the subject of this paragraph.\n"
                              "{text}\nShort description:"),
        TaskTemplate("what", "{text}\n\nIn a few words, what is this?\nAnswer:"),
        TaskTemplate("wiki", "Paragraph: {text}\nWikipedia short description:"),
    )),
    TaskSpec("cloze", "qa", "em", (
        TaskTemplate("passage", "Answer the question from the passage.\nPassage: {text}\nQuestion: {question}\n"
                                "Answer:"),
        TaskTemplate("read", "{text}\n\nQ: {question}\nA:"),
        TaskTemplate("short", "Read the text and reply with a short answer.\nText: {text}\n"
                              "Question: {question}\nShort answer:"),
    ), synthetic=True),
    TaskSpec("closedbook", "qa", "em", (
        TaskTemplate("question", "Question: {text}\nAnswer:"),
        TaskTemplate("trivia", "Answer this trivia question with a short phrase.\n{text}\nAnswer:"),
        TaskTemplate("qa", "Q: {text}\nA:"),
    )),
    TaskSpec("subject", "naming", "em", (
        TaskTemplate("blank", "The name of the subject was replaced by ___ in this paragraph. What is the name?\n"
                              "{text}\nName:"),
        TaskTemplate("who", "{text}\n\nWho or what is ___?\nAnswer:"),
        TaskTemplate("title", "Fill in the blank with the title of the Wikipedia article.\n{text}\nTitle:"),
    ), held_out=True, synthetic=True),
]}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise PipelineConfigError(f"unknown task '{name}'; the bundled mixture's tasks are {list(TASKS)} "
                                  "(TASK or TASK/TEMPLATE); leave the task out to pass a fully rendered input")
    return TASKS[name]


def topic_choices() -> str:
    return ", ".join(TOPICS)


def render(task: str, text: str, template: str | None = None, **fields) -> tuple[str, str]:
    """``(template name, rendered input)`` for ``text`` under a task's template.

    :param task: A task name, or ``TASK/TEMPLATE`` to pick one of its templates (default: the first).
    :param text: The main input: a paragraph, a question, or (``cloze``) the passage.
    :param fields: Other fields a template names (``question`` for ``cloze``).
    """
    if template is None and "/" in task:
        task, template = task.split("/", 1)
    spec = get_task(task)
    names = [t.name for t in spec.templates]
    if template is None:
        chosen = spec.templates[0]
    elif template in names:
        chosen = spec.templates[names.index(template)]
    else:
        raise PipelineConfigError(f"task '{task}' has no template '{template}'; its templates are {names}")
    values = {"text": text.strip(), TOPIC_CHOICES_FIELD: topic_choices(), **fields}
    if task == "cloze" and "question" not in fields:
        # user input for cloze: "PASSAGE\nQuestion: ..." or just the passage's last line as the question
        passage, sep, question = text.strip().rpartition("Question:")
        if not sep:
            raise PipelineConfigError("task 'cloze' needs a passage and a question: pass 'PASSAGE Question: QUESTION'")
        values.update(text=passage.strip(), question=question.strip())
    return chosen.name, chosen.input.format(**values)
