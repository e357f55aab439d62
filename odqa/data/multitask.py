"""Multitask data for ID-PT (paper Section 2): a P3/T0-style loader and the bundled mixture.

A multitask example is a rendered prompt (``inputs``), its target text (``targets``), the
gold answers it is scored against, and the task it belongs to. Two sources:

**P3/T0-style files** (:func:`read_multitask`): jsonl with ``inputs``/``targets`` (or
``inputs_pretokenized``/``targets_pretokenized``, P3's text columns) and a ``task``; or a
directory written by HF ``datasets`` (``save_to_disk``), read with ``datasets.load_from_disk``.

**The bundled mixture** (:func:`build_mixture`, ``odqa data multitask``), built offline from
the bundled corpus (``wiki-vital``: lead paragraphs with their Wikipedia ``topic`` and short
``description``) and FanOutQA. Five task kinds in four clusters, as T0 groups its datasets:

==============  ============  ===========================================================  ========
task            cluster       what                                                         score
==============  ============  ===========================================================  ========
``topic``       classification  the topic of a lead paragraph, one of 11                   accuracy
``description`` generation    the article's short description, from its lead               F1
``cloze``       qa            a synthetic cloze question (:mod:`odqa.data.cloze`)      EM
                              answered from its passage
``closedbook``  qa            a FanOutQA sub-question, closed-book                         EM
``subject``     naming        the lead with the subject's name masked: name it             EM
==============  ============  ===========================================================  ========

``subject`` (the whole *naming* cluster) is **held out**: it is never in ``train`` or ``dev``,
only in ``test``, to measure generalization to an unseen task, as T0 holds out whole clusters.
It is the kind a 135M model has a chance at: the answer is a short span like the QA cluster's
(so the answer *format* transfers), and the masked lead usually carries strong clues (the
description, places, dates), while the model need not learn a new output space.

The topic "Uncategorized" (1,000 leads, the tail of the alphabet, not a topic) is left out,
so the classification task has 11 labels. Splits are fixed by a hash of the passage title
(70% train / 10% dev / 20% test, the same for every wiki task, so no passage crosses splits)
and, for ``closedbook``, by :func:`odqa.data.questions.split_of` on the root question (the splits
of ``fanoutqa-closedbook``). Every record says whether it is synthetic (``cloze``,
``subject``: made by odqa from the corpus) or real labels (``topic``, ``description``,
``closedbook``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from odqa.data.corpus import iter_jsonl
from odqa.errors import ResourceNotFoundError, TrainingDataError
from odqa.lm.tasks import TASKS, render
from odqa.runs import atomic_write_bytes

SPLITS = ("train", "dev", "test")
EXCLUDED_TOPICS = {"Uncategorized"}
MAX_WORDS = 60  # lead paragraphs are cut to this many words: inputs stay near 100 LM tokens


@dataclass
class MultitaskExample:
    """One rendered example. ``answers`` are the gold strings it is scored against (``targets``
    is the first); ``fields`` keep the raw text the template was filled with."""

    id: str
    task: str
    inputs: str
    targets: str
    answers: list[str] = field(default_factory=list)
    template: str = ""
    cluster: str = ""
    metric: str = "em"
    held_out: bool = False
    synthetic: bool = False
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --- reading P3/T0-style files ----------------------------------------------------------------
def _text(value, where: str, key: str) -> str:
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        raise TrainingDataError(f"{where}: '{key}' holds token ids, not text; give the text in "
                                f"'{key}_pretokenized' (P3 has both columns)")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise TrainingDataError(f"{where}: '{key}' must be a non-empty string, got {value!r:.60}")
    return value


def example_from_record(rec: dict, where: str, default_task: str | None = None) -> MultitaskExample:
    """A :class:`MultitaskExample` from one P3/T0-style record (see :func:`read_multitask`)."""
    if not isinstance(rec, dict):
        raise TrainingDataError(f"{where}: expected an object with inputs/targets/task, got {type(rec).__name__}")
    keys = {}
    for key in ("inputs", "targets"):
        for name in (f"{key}_pretokenized", key):  # P3's text column wins over its token ids
            if rec.get(name) is not None:
                keys[key] = name
                break
        else:
            raise TrainingDataError(f"{where}: missing '{key}' (or '{key}_pretokenized'); each record needs "
                                    "inputs, targets and a task")
    inputs = _text(rec[keys["inputs"]], where, keys["inputs"]).rstrip()
    targets = _text(rec[keys["targets"]], where, keys["targets"]).strip()
    task = rec.get("task", rec.get("task_name", default_task))
    if not isinstance(task, str) or not task.strip():
        raise TrainingDataError(f"{where}: missing 'task' (the task name); add a 'task' field, or pass the task "
                                "name for a file that holds one task")
    answers = rec.get("answers") or [targets]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise TrainingDataError(f"{where}: 'answers' must be a list of strings")
    spec = TASKS.get(task)
    return MultitaskExample(
        id=str(rec.get("id", where)), task=task, inputs=inputs, targets=targets, answers=answers,
        template=str(rec.get("template", "")), cluster=str(rec.get("cluster") or (spec.cluster if spec else "other")),
        metric=str(rec.get("metric") or (spec.metric if spec else "em")),
        held_out=bool(rec.get("held_out", spec.held_out if spec else False)),
        synthetic=bool(rec.get("synthetic", False)), fields=rec.get("fields") or {},
    )


def read_multitask(path: str | Path, split: str | None = None, task: str | None = None) -> list[MultitaskExample]:
    """Read multitask examples.

    :param path: A ``.jsonl`` file; a mixture directory holding ``{split}.jsonl`` (what
        ``odqa data multitask`` writes); or a directory written by ``datasets``' ``save_to_disk``
        (a ``DatasetDict``'s ``split``; ``dev`` also finds ``validation``).
    :param split: Which split of a directory to read.
    :param task: Task name for records that have none (a P3 dataset holds one task).
    """
    path = Path(path)
    if not path.exists():
        raise ResourceNotFoundError(f"multitask data '{path}' does not exist; build the bundled mixture with "
                                    "`odqa data multitask --out data/multitask/wiki-mixture`")
    if path.is_dir():
        if split is None:
            raise TrainingDataError(f"'{path}' is a directory; say which split to read ({', '.join(SPLITS)})")
        if (path / f"{split}.jsonl").exists():
            path = path / f"{split}.jsonl"
        elif any((path / n).exists() for n in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return _read_hf_dataset(path, split, task)
        else:
            raise TrainingDataError(f"'{path}' holds neither {split}.jsonl nor a `datasets` save_to_disk dataset")
    out = []
    for lineno, rec in _iter_records(path):
        out.append(example_from_record(rec, f"{path}:{lineno}", task))
    if not out:
        raise TrainingDataError(f"'{path}' holds no examples")
    return out


def _iter_records(path: Path):
    from odqa.errors import InputFormatError

    try:
        yield from iter_jsonl(path)
    except InputFormatError as e:
        if isinstance(e, TrainingDataError):
            raise
        raise TrainingDataError(str(e)) from None


def _read_hf_dataset(path: Path, split: str, task: str | None) -> list[MultitaskExample]:
    try:
        import datasets
    except ImportError:
        raise TrainingDataError(f"'{path}' is a HF `datasets` directory, and reading it needs the datasets "
                                "package: pip install datasets") from None
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        names = [split] + (["validation"] if split == "dev" else [])
        found = next((n for n in names if n in data), None)
        if found is None:
            raise TrainingDataError(f"'{path}' has no split '{split}'; it has {list(data)}")
        data = data[found]
    out = [example_from_record(rec, f"{path}[{i}]", task) for i, rec in enumerate(data)]
    if not out:
        raise TrainingDataError(f"'{path}' split '{split}' holds no examples")
    return out


def write_multitask(path: Path, examples: list[MultitaskExample]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)
    atomic_write_bytes(path, data.encode("utf-8"))
    return path


# --- the bundled mixture ------------------------------------------------------------------------
def _bucket(key: str, modulo: int = 10) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % modulo


def wiki_split(title: str) -> str:
    """70% train / 10% dev / 20% test by a stable hash of the article title."""
    b = _bucket(f"wiki:{title}")
    return "train" if b < 7 else "dev" if b < 8 else "test"


def shorten(text: str, max_words: int = MAX_WORDS) -> str:
    """The first ``max_words`` words, cut back to the last full sentence when one ends past half of them."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    cut = " ".join(words[:max_words])
    end = cut.rfind(". ")
    return cut[: end + 1] if end > len(cut) // 2 else cut + " ..."


def clean_title(title: str) -> str:
    return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()


def mask_subject(text: str, title: str) -> str | None:
    """The lead with the subject's name (and, for a multi-word name, its last word) replaced by ___.

    Returns ``None`` when the name does not occur (nothing to mask)."""
    name = clean_title(title)
    pattern = re.compile(rf"\b{re.escape(name)}(?:'s|s)?\b", re.IGNORECASE)
    if not pattern.search(text):
        return None
    masked = pattern.sub("___", text)
    words = name.split()
    if len(words) > 1 and len(words[-1]) >= 4 and words[-1][0].isupper():
        masked = re.sub(rf"\b{re.escape(words[-1])}(?:'s)?\b", "___", masked)
    return masked


def _wiki_records() -> list[dict]:
    from odqa.resources import bundled_data_path

    data = json.loads(bundled_data_path("wiki-vital").read_text(encoding="utf-8"))
    return [{"title": rec.get("title") or title, "text": rec["extract"].strip(),
             "description": (rec.get("description") or "").strip(), "topic": rec.get("topic") or ""}
            for title, rec in data.items()]


def _make(task: str, key: str, fields: dict, answers: list[str], rng: random.Random) -> MultitaskExample:
    spec = TASKS[task]
    template = spec.templates[rng.randrange(len(spec.templates))]
    _, inputs = render(task, fields["text"], template.name, **{k: v for k, v in fields.items() if k != "text"})
    return MultitaskExample(id=f"{task}-{key}", task=task, inputs=inputs, targets=answers[0], answers=answers,
                            template=template.name, cluster=spec.cluster, metric=spec.metric,
                            held_out=spec.held_out, synthetic=spec.synthetic, fields=fields)


def _wiki_task_examples(task: str, wiki: list[dict], split: str, n: int, seed: int) -> list[MultitaskExample]:
    rng = random.Random(f"{seed}:{task}:{split}")
    pool = [r for r in wiki if wiki_split(r["title"]) == split and r["topic"] not in EXCLUDED_TOPICS]
    rng.shuffle(pool)
    out = []
    for r in pool:
        if len(out) >= n:
            break
        text = shorten(r["text"])
        if task == "topic":
            out.append(_make(task, r["title"], {"text": text}, [r["topic"]], rng))
        elif task == "description":
            if r["description"] and 1 <= len(r["description"].split()) <= 12:
                out.append(_make(task, r["title"], {"text": text}, [r["description"]], rng))
        elif task == "subject":
            masked = mask_subject(text, r["title"])
            if masked and masked.count("___") <= 4:
                out.append(_make(task, r["title"], {"text": masked}, [clean_title(r["title"])], rng))
    return out


def _cloze_examples(split: str, n: int, seed: int) -> list[MultitaskExample]:
    from odqa.data.corpus import read_corpus
    from odqa.data.cloze import make_cloze

    passages = [p for p in read_corpus("wiki-vital") if wiki_split(p.title) == split]
    rng = random.Random(f"{seed}:cloze:{split}")
    out = []
    for ex in make_cloze(passages, 2 * n, seed=seed, per_passage=1, corpus_name="wiki-vital"):
        if len(out) >= n:
            break
        text = shorten(ex.positives[0].text)
        if ex.answers[0].lower() not in text.lower():
            continue  # the answer fell past the cut
        out.append(_make("cloze", ex.id, {"text": text, "question": ex.question}, ex.answers, rng))
    return out


def _closedbook_examples(split: str, n: int, seed: int) -> list[MultitaskExample]:
    from odqa.data.questions import dedup, fanoutqa_closedbook, split_of

    qs = [q for q in dedup(fanoutqa_closedbook()) if split_of(q.root_id) == split]
    rng = random.Random(f"{seed}:closedbook:{split}")
    rng.shuffle(qs)
    return [_make("closedbook", f"{q.id}-{i}", {"text": q.question}, q.answers, rng) for i, q in enumerate(qs[:n])]


@dataclass
class MixtureSizes:
    train: int = 300  # per training task
    dev: int = 24
    test: int = 60


def build_mixture(sizes: MixtureSizes = MixtureSizes(), seed: int = 0) -> dict[str, list[MultitaskExample]]:
    """The bundled mixture, ``{split: examples}``; held-out tasks appear only in ``test``."""
    wiki = _wiki_records()
    out: dict[str, list[MultitaskExample]] = {}
    for split in SPLITS:
        n = getattr(sizes, split)
        examples: list[MultitaskExample] = []
        for task, spec in TASKS.items():
            if spec.held_out and split != "test":
                continue
            if task == "cloze":
                examples += _cloze_examples(split, n, seed)
            elif task == "closedbook":
                examples += _closedbook_examples(split, n, seed)
            else:
                examples += _wiki_task_examples(task, wiki, split, n, seed)
        out[split] = examples
    return out


def mixture_summary(mixture: dict[str, list[MultitaskExample]]) -> dict:
    from collections import Counter

    return {split: dict(Counter(e.task for e in exs)) for split, exs in mixture.items()}


def write_mixture(out_dir: str | Path, sizes: MixtureSizes = MixtureSizes(), seed: int = 0) -> dict:
    """Build the bundled mixture and write ``{train,dev,test}.jsonl`` + ``manifest.json`` to ``out_dir``."""
    from odqa.artifacts import command_line

    out_dir = Path(out_dir)
    mixture = build_mixture(sizes, seed)
    for split, examples in mixture.items():
        write_multitask(out_dir / f"{split}.jsonl", examples)
    manifest = {
        "kind": "multitask_mixture",
        "command": command_line(),
        "seed": seed,
        "sizes_per_task": asdict(sizes),
        "counts": mixture_summary(mixture),
        "tasks": {name: {"cluster": s.cluster, "metric": s.metric, "held_out": s.held_out, "synthetic": s.synthetic,
                         "templates": [t.name for t in s.templates]} for name, s in TASKS.items()},
        "held_out": [name for name, s in TASKS.items() if s.held_out],
        "sources": {"topic": "wiki-vital topic labels (11; 'Uncategorized' left out)",
                    "description": "wiki-vital short descriptions",
                    "subject": "wiki-vital leads with the title masked (made by odqa; synthetic)",
                    "cloze": "synthetic cloze questions (odqa.data.cloze) with their passage",
                    "closedbook": "FanOutQA dev sub-questions (fanoutqa-closedbook splits)"},
        "splits": "wiki tasks: sha1 of the title, 70/10/20 train/dev/test; closedbook: odqa.data.questions.split_of",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
