"""Train the re-ranker (paper, Section 3) as a LoRA adapter on a frozen encoder. Two students:

- ``cross-encoder`` (default): the base encoder (MiniLM by default) is loaded as a one-output
  sequence classifier and frozen; LoRA matrices on its attention and dense layers, plus the
  classification head, learn to score (question, passage) pairs.
- ``query-encoder``: Atlas's query-side fine-tuning (:mod:`odqa.lm.query_encoder`): LoRA on the
  dense index's own question encoder and a score scale; passages keep the index's vectors, so the
  student starts as the dense retriever's order and a scored candidate costs no encoder pass.

The artifact holds just the adapter (``adapter_model.safetensors`` + ``adapter_config.json``) with
``manifest.json`` and ``curves.png``: a few MB, while the base is resolved by name at load time.

Each step takes B questions, each with 1 positive and k hard negatives, and minimises the
listwise softmax cross-entropy (:func:`step_loss`); the loop around it -- AdamW with linear warmup
and decay, periodic dev evaluation with early stopping on MRR, atomic checkpoints in
``<out>.work/`` (``--resume``) -- is :func:`odqa.training.loop.train_loop`.

Dev evaluation uses the pipeline's own retrieval: each dev question's candidates are what its
retrieval stages (e.g. bm25 + dense -> RRF join) return, and metrics are taken before and after
re-ranking: recall@k and MRR (DPR ``has_answer`` on the passage text), and LM-input recall,
the answer being in what the pipeline's ``ContextPacker`` fits into the reader's budget
(the paper's Table 2 metric).

    odqa train reranker --pipeline pipelines/frozen_reader.yml \\
        --train data/synthetic/cloze-wiki-vital.train.jsonl --dev fanoutqa-wiki:dev \\
        --out pipelines/artifacts/reranker-minilm-synthetic
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from collections.abc import Callable

import torch

from odqa.configs import RerankerTrainConfig
from odqa.data.questions import is_question_set
from odqa.errors import PipelineConfigError, TrainingDataError
from odqa.metrics import has_answer, percent, recall_at_k, reciprocal_rank
from odqa.runs import atomic_write_bytes, file_sha256
from odqa.artifacts import ArtifactWriter, make_manifest, write_manifest
from odqa.training.checkpoints import work_dir
from odqa.data.negatives import Ctx, TrainExample
from odqa.lm.cross_encoder import KIND, base_weights, load_base, pair_text, quiet_transformers, score_pairs
from odqa.training.frozen import FrozenCheck
from odqa.training.loop import plot_curves, train_loop

KS = (1, 5, 10, 20)
DEV_CACHE = "dev-set.json"  # the dev questions' retrieved candidates, beside the checkpoint
COMMIT_LIMIT = 5 * 1024 * 1024  # artifacts above this are rebuilt by command, not committed (DESIGN.md)


# settings a resumed run must share with its checkpoint (epochs / max_steps may grow)
RESUME_KEYS = ("student", "base", "labels", "train_candidates", "temperature", "batch_questions", "negatives", "lr",
               "weight_decay", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "max_length", "max_examples",
               "seed")


def _head_modules(fresh: set[str]) -> list[str]:
    """Modules trained whole (peft ``modules_to_save``): the head, and any other freshly made module."""
    return sorted({"classifier"} | {k.rsplit(".", 1)[0] for k in fresh})


def lora_config(cfg: RerankerTrainConfig, fresh: set[str]):
    from peft import LoraConfig

    heads = _head_modules(fresh)
    return LoraConfig(task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), modules_to_save=heads,
                      exclude_modules=[h for h in heads if h != "classifier"] or None)


# --- training data --------------------------------------------------------------------------
def read_examples(path: str | Path) -> list[TrainExample]:
    """Training examples from a jsonl file of :meth:`TrainExample.to_dict` records, checked for use
    by the re-ranker: every example needs a positive passage, and some need hard negatives."""
    from odqa.data.negatives import read_training_data

    return checked_examples(read_training_data(Path(path)), Path(path))


def checked_examples(examples: list[TrainExample], path: Path) -> list[TrainExample]:
    """``examples`` read from ``path``, refused when the re-ranker cannot learn from them."""
    no_pos = [e for e in examples if not e.positives]
    if no_pos:
        raise TrainingDataError(
            f"example '{no_pos[0].id}' in '{path}' has no positive passage ({len(no_pos)} of {len(examples)} "
            "examples have none); the re-ranker needs one per question: mine them with `odqa data negatives`, "
            "or drop those examples"
        )
    if not any(e.hard_negatives for e in examples):
        raise TrainingDataError(
            f"no example in '{path}' has hard negatives; the re-ranker learns from them: mine them with "
            "`odqa data negatives`"
        )
    return examples


def questions_only(examples: list[TrainExample]) -> bool:
    """Whether a file's records are questions and answers with no passages at all (e.g. NQ-open
    jsonl): such a file is trained on like a question set, its groups from the pipeline's retrieval."""
    return bool(examples) and not any(e.positives or e.hard_negatives for e in examples)


def make_group(ex: TrainExample, batch: list[TrainExample], k: int, rng: random.Random) -> list[Ctx]:
    """One positive then up to ``k`` negatives: the example's hard negatives, sampled when there are
    more, topped up with other questions' passages from the batch that do not hold this answer."""
    negatives = list(ex.hard_negatives)
    negatives = rng.sample(negatives, k) if len(negatives) > k else negatives
    if len(negatives) < k:
        own = {c.id for c in ex.positives} | {c.id for c in negatives}
        pool = [c for other in batch if other is not ex for c in other.positives + other.hard_negatives
                if c.id not in own and not has_answer(c.text, ex.answers)]
        pool = list({c.id: c for c in pool}.values())
        negatives += rng.sample(pool, min(k - len(negatives), len(pool)))
    return [rng.choice(ex.positives), *negatives]


Scorer = Callable[[list[str], list[list[Ctx]]], torch.Tensor]  # a student's [questions, widest group] scores


def padded(groups: list[list[Ctx]], flat: torch.Tensor) -> torch.Tensor:
    """``flat`` scores of every group's candidates, in order, as ``[groups, widest group]`` with
    ``-inf`` where a group is shorter."""
    scores = flat.new_full((len(groups), max(len(g) for g in groups)), float("-inf"))
    start = 0
    for i, g in enumerate(groups):
        scores[i, : len(g)] = flat[start:start + len(g)]
        start += len(g)
    return scores


def group_scores(model, tokenizer, questions: list[str], groups: list[list[Ctx]],
                 cfg: RerankerTrainConfig) -> torch.Tensor:
    """The cross-encoder's scores of each question's group of passages: ``[questions, widest group]``,
    ``-inf`` where a group is shorter."""
    flat_q = [q for q, g in zip(questions, groups) for _ in g]
    passages = [pair_text(c.title, c.text) for g in groups for c in g]
    ids = tokenizer(flat_q, passages, truncation=True, max_length=cfg.max_length)["input_ids"]
    # forward in micro-batches of similar length (padding to the step's longest pair wastes ~half
    # the compute on CPU); one backward through all of them
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    parts, where = [], []
    for start in range(0, len(order), cfg.micro_batch):
        idx = order[start:start + cfg.micro_batch]
        enc = tokenizer([flat_q[i] for i in idx], [passages[i] for i in idx], truncation=True,
                        max_length=cfg.max_length, padding=True, return_tensors="pt")
        parts.append(model(**enc.to(model.device)).logits[:, 0])
        where += idx
    logits = torch.cat(parts)[torch.argsort(torch.tensor(where, device=model.device))]  # back to pair order
    return padded(groups, logits)


def step_loss(score: Scorer, batch: list[TrainExample], cfg: RerankerTrainConfig, rng: random.Random):
    """Listwise softmax cross-entropy: each question's positive against its negatives."""
    groups = [make_group(ex, batch, cfg.negatives, rng) for ex in batch]
    scores = score([ex.question for ex in batch], groups)
    return torch.nn.functional.cross_entropy(scores, scores.new_zeros(len(groups), dtype=torch.long))


@dataclass
class TaughtGroup:
    """A training question's retrieved candidates with the frozen reader's score of each
    (:mod:`odqa.training.teacher`)."""

    id: str
    question: str
    candidates: list[Ctx]
    teacher: list[float]


def teacher_targets(teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The target distribution over a question's candidates: softmax of the teacher's scores / T."""
    return torch.softmax(teacher / temperature, dim=-1)


def distill_loss(score: Scorer, batch: list[TaughtGroup], cfg: RerankerTrainConfig) -> torch.Tensor:
    """Listwise KL(teacher || student) over each question's candidates (Atlas perplexity distillation)."""
    scores = score([g.question for g in batch], [g.candidates for g in batch])
    width = scores.shape[1]
    teacher = scores.new_full((len(batch), width), float("-inf"))
    for i, g in enumerate(batch):
        teacher[i, : len(g.teacher)] = torch.tensor(g.teacher, dtype=scores.dtype)
    target = teacher_targets(teacher, cfg.temperature)
    student = torch.log_softmax(scores, dim=-1)
    keep = target > 0
    return (target[keep] * (target[keep].log() - student[keep])).sum() / len(batch)


# --- training groups from a question set ------------------------------------------------------
TRAIN_CACHE = "train-set.json"  # the training questions' retrieved candidates


def question_set_examples(pipeline: str | Path, spec: str, cfg: RerankerTrainConfig, work: Path,
                          progress: bool = True) -> tuple[list, int, dict | None]:
    """Training groups made from real questions (e.g. ``trivia-wiki:train``) and the candidates the
    pipeline's own retrieval returns for them (its first ``cfg.train_candidates``):

    - ``labels="answer"``: distant supervision as DPR trains, positives the candidates holding an
      accepted answer (``has_answer``), negatives the rest; a question needs one of each.
    - ``labels="reader"``: every candidate with the frozen reader's score (:mod:`odqa.training.teacher`).

    Returns ``(examples, questions in the set, the teacher's agreement with has_answer or None)``.
    """
    from odqa.data.negatives import Ctx

    # only the questions trained on are retrieved: the seeded subset of --max-examples is drawn first
    found = build_dev_set(pipeline, spec, None, cfg.train_candidates, progress, cache=work / TRAIN_CACHE,
                          desc="train candidates", sample=cfg.max_examples, seed=cfg.seed)
    questions, candidates, flags = found.questions, found.candidates, found.flags

    def ctx(d) -> Ctx:
        return Ctx(id=str(d.id), title=d.meta.get("title", ""), text=d.content)

    if cfg.labels == "reader":
        from odqa.training.teacher import SCORES_FILE, ReaderTeacher, teacher_scores

        teacher = ReaderTeacher(pipeline_reader(pipeline))
        with FrozenCheck(teacher.backbone.model, teacher.name["model"]) as reader_check:  # the reader only reads
            scores = teacher_scores(teacher, questions, candidates, work / SCORES_FILE, progress)
        stats = {"reader": teacher.name, "reader_backbone_hash": reader_check.digest, "questions": len(questions),
                 "candidates": cfg.train_candidates,
                 # how often the candidate first in each order holds an accepted answer
                 "top1_has_answer": {"retrieval": percent([bool(f and f[0]) for f in flags]),
                                     "teacher": percent([bool(f) and f[max(range(len(s)), key=s.__getitem__)]
                                                         for f, s in zip(flags, scores)])}}
        _say(progress, f"teacher: the top candidate holds an answer for {stats['top1_has_answer']['teacher']}% of "
                       f"training questions (retrieval order: {stats['top1_has_answer']['retrieval']}%)")
        return [TaughtGroup(str(q.id), q.question, [ctx(d) for d in docs], s)
                for q, docs, s in zip(questions, candidates, scores) if docs], found.in_set, stats
    examples = []
    for q, docs, holds in zip(questions, candidates, flags):
        pos = [ctx(d) for d, f in zip(docs, holds) if f]
        neg = [ctx(d) for d, f in zip(docs, holds) if not f]
        if pos and neg:
            examples.append(TrainExample(id=str(q.id), question=q.question, answers=list(q.answers), positives=pos,
                                         hard_negatives=neg, source=f"{spec}:{cfg.train_candidates} candidates"))
    if not examples:
        raise TrainingDataError(f"no question of '{spec}' has both a candidate holding its answer and one without "
                                f"in the retrieval's first {cfg.train_candidates}; raise --train-candidates")
    return examples, found.in_set, None


def pipeline_reader(pipeline_path: str | Path):
    """The pipeline's :class:`~odqa.components.readers.FrozenLMReader` (the teacher)."""
    from odqa.api import load_pipeline
    from odqa.components.readers import FrozenLMReader

    readers = [c for _, c in load_pipeline(pipeline_path).walk() if isinstance(c, FrozenLMReader)]
    if not readers:
        raise PipelineConfigError(f"{pipeline_path}: the pipeline has no FrozenLMReader to teach the re-ranker; "
                                  "pass a frozen-reader pipeline such as pipelines/frozen_reader.yml")
    return readers[0]


# --- dev evaluation -------------------------------------------------------------------------
@dataclass
class DevSet:
    """Dev questions with the candidates the pipeline's retrieval stages return for each."""

    questions: list  # odqa.data.questions.Question
    candidates: list[list]  # haystack Documents, in retrieval order
    flags: list[list[bool]]  # has_answer of each candidate's text
    packer: object  # the pipeline's ContextPacker
    source: str  # the stage the candidates come from
    retrieval: object = None  # the pipeline's retrieval stages (a haystack Pipeline)
    in_set: int = 0  # questions in the set before a sample was drawn


def documents_sender(pipeline, name: str) -> str | None:
    """The component that sends ``documents`` to ``name`` in ``pipeline`` (``None`` when none does)."""
    senders = [u for u, _, data in pipeline.graph.in_edges(name, data=True)
               if data.get("to_socket") is not None and data["to_socket"].name == "documents"]
    return senders[0] if senders else None


def retrieval_pipeline(pipeline_path: str | Path):
    """``(retrieval-only pipeline, name of its last stage, the packer)``: the stages up to what feeds
    the ranker (or, without one, the packer), so dev candidates are what a ranker would re-order."""
    import networkx

    from odqa.api import load_pipeline, pipeline_from_dict
    from odqa.components.packing import ContextPacker
    from odqa.components.rankers import CrossEncoderRanker

    pipeline = load_pipeline(pipeline_path)
    packers = [n for n, c in pipeline.walk() if isinstance(c, ContextPacker)]
    if not packers:
        raise PipelineConfigError(f"{pipeline_path}: the pipeline has no ContextPacker; the re-ranker's dev "
                                  "evaluation packs candidates with the pipeline's packer, so pass a frozen-reader "
                                  "pipeline such as pipelines/frozen_reader.yml")
    source = documents_sender(pipeline, packers[0])
    if source and isinstance(pipeline.get_component(source), CrossEncoderRanker):
        source = documents_sender(pipeline, source)
    if source is None:
        raise PipelineConfigError(f"{pipeline_path}: nothing sends documents to the packer '{packers[0]}'; "
                                  "connect the retrievers (or their join) to it")
    keep = networkx.ancestors(pipeline.graph, source) | {source}
    data = pipeline.to_dict()
    data["components"] = {k: v for k, v in data["components"].items() if k in keep}
    data["connections"] = [c for c in data["connections"]
                           if c["sender"].split(".")[0] in keep and c["receiver"].split(".")[0] in keep]
    retrieval = pipeline_from_dict(data)
    return retrieval, source, pipeline.get_component(packers[0])


def build_dev_set(pipeline_path: str | Path, dev: str, limit: int | None = None,
                  max_candidates: int | None = None, progress: bool = True, cache: Path | None = None,
                  desc: str = "dev candidates", sample: int | None = None, seed: int = 0) -> DevSet:
    """Dev questions and their retrieved candidates. With ``cache``, they are read from that file
    when it was written for the same pipeline file, dev set, limit and candidate count (so a
    resumed run, or one on another machine without the index, skips retrieval), else written there.
    ``sample`` keeps a seeded random subset of that many questions (in set order) before retrieval."""
    from haystack import Document
    from tqdm.auto import tqdm

    from odqa.data.questions import Question, dedup, load_questions

    key = {"pipeline_sha256": file_sha256(pipeline_path), "dev": dev,
           "limit": limit, "max_candidates": max_candidates}
    if sample:
        key |= {"sample": sample, "seed": seed}
    saved = json.loads(cache.read_text()) if cache is not None and cache.exists() else None
    retrieval, source, packer = retrieval_pipeline(pipeline_path)
    packer.warm_up()
    if saved and saved.get("key") == key:
        questions = [Question(**q) for q in saved["questions"]]
        candidates = [[Document.from_dict(d) for d in docs] for docs in saved["candidates"]]
        in_set = saved.get("in_set", len(questions))
    else:
        questions = dedup(load_questions(dev, require_answers=True))[:limit]
        if not questions:
            raise TrainingDataError(f"dev set '{dev}' has no questions; pass e.g. fanoutqa-wiki:dev")
        in_set = len(questions)
        if sample and sample < len(questions):
            questions = [questions[i] for i in sorted(random.Random(seed).sample(range(len(questions)), sample))]
        candidates = []
        for q in tqdm(questions, desc=desc, unit="q", disable=not progress):
            docs = retrieval.run({"query": q.question}, include_outputs_from={source})[source]["documents"]
            candidates.append(docs[:max_candidates] if max_candidates else docs)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache, json.dumps({"key": key, "in_set": in_set,
                                                  "questions": [q.to_dict() for q in questions],
                                                  "candidates": [[d.to_dict() for d in docs] for docs in candidates]
                                                  }).encode("utf-8"))
    flags = [[has_answer(d.content, q.answers) for d in docs] for q, docs in zip(questions, candidates)]
    return DevSet(questions, candidates, flags, packer, source, retrieval, in_set)


def ranking_metrics(dev: DevSet, orders: list[list[int]]) -> dict:
    """recall@k and MRR over the candidates in ``orders`` (indices into each question's candidates),
    and LM-input recall: the answer is in what the packer keeps of that order. Recall in percent."""
    ranked, lm_input = [], []
    for q, docs, flags, order in zip(dev.questions, dev.candidates, dev.flags, orders):
        ranked.append([flags[i] for i in order])
        packed = dev.packer.run(query=q.question, documents=[docs[i] for i in order])["documents"]
        lm_input.append(any(has_answer(d.content, q.answers) for d in packed))
    return {**{f"recall@{k}": v for k, v in recall_at_k(ranked, KS).items()},
            "mrr": round(statistics.mean(reciprocal_rank(r) for r in ranked), 4), "lm_input_recall": percent(lm_input)}


def rerank_orders(student: "Student", dev: DevSet, progress: bool = True) -> list[list[int]]:
    """Each dev question's candidates, as indices, in the order of the student's scores."""
    from tqdm.auto import tqdm

    was_training = student.model.training
    student.model.eval()
    orders = []
    with torch.inference_mode():
        for q, docs in tqdm(list(zip(dev.questions, dev.candidates)), desc="dev re-ranking", unit="q", leave=False,
                            disable=not progress):
            scores = student.rank(q.question, docs)
            orders.append(sorted(range(len(docs)), key=lambda i: -scores[i]))
    student.model.train(was_training)
    return orders


# --- the two students -----------------------------------------------------------------------
@dataclass
class Student:
    """A re-ranker being trained, whichever its architecture: what the loop, the dev evaluation and
    the artifact need of it."""

    kind: str  # the artifact kind
    base: str  # the frozen base encoder, by name
    model: torch.nn.Module  # what train_loop checkpoints (its trained tensors only)
    frozen: torch.nn.Module  # the base weights, watched by FrozenCheck
    score: Scorer  # training scores of each question's group
    rank: Callable[[str, list], list[float]]  # dev scores of one question's Documents
    describe: str  # what is trained, for the log
    save: Callable[[Path], dict]  # writes the adapter into a directory; returns manifest fields


def cross_encoder_student(cfg: RerankerTrainConfig) -> Student:
    """LoRA + a fresh head on the base encoder read as a one-output sequence classifier."""
    from peft import get_peft_model

    base, tokenizer, frozen, fresh = load_base(cfg.base)
    with quiet_transformers():
        model = get_peft_model(base, lora_config(cfg, fresh))

    def rank(question: str, docs: list) -> list[float]:
        pairs = [(question, pair_text(d.meta.get("title", ""), d.content)) for d in docs]
        return score_pairs(model, tokenizer, pairs, cfg.eval_batch_size, cfg.max_length)

    def save(tmp: Path) -> dict:
        _save_adapter(model, tmp, cfg.base)
        return {"lora": {**_lora_fields(cfg), "modules_to_save": _head_modules(fresh)}, "max_length": cfg.max_length,
                "tokenizer": "base"}

    def score(questions: list[str], groups: list[list[Ctx]]) -> torch.Tensor:
        return group_scores(model, tokenizer, questions, groups, cfg)

    return Student(KIND, cfg.base, model, frozen, score, rank,
                   f"cross-encoder {cfg.base}, LoRA r={cfg.lora_r} on {cfg.lora_targets} + {_head_modules(fresh)}", save)


def query_encoder_student(cfg: RerankerTrainConfig, index) -> Student:
    """LoRA on the dense index's question encoder, scored against the index's passage vectors."""
    from peft import LoraConfig, get_peft_model

    from odqa.lm import query_encoder as qe

    name = index.manifest["encoder"]
    qe.check_index(index, name)
    encoder = qe.QueryEncoder(name)
    frozen = base_weights(encoder.transformer, set())
    with quiet_transformers():
        encoder.set_transformer(get_peft_model(encoder.transformer, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets))))

    def score(questions: list[str], groups: list[list[Ctx]]) -> torch.Tensor:
        width = max(len(g) for g in groups)
        vectors = torch.zeros(len(groups), width, int(index.manifest["dim"]))
        for i, g in enumerate(groups):
            vectors[i, : len(g)] = torch.from_numpy(index.vectors([c.id for c in g]))
        scores = encoder.scores(questions, vectors)
        lengths = torch.tensor([len(g) for g in groups], device=scores.device)
        return scores.masked_fill(torch.arange(width, device=scores.device) >= lengths[:, None], float("-inf"))

    def rank(question: str, docs: list) -> list[float]:
        return encoder.scores([question], torch.from_numpy(index.vectors([str(d.id) for d in docs]))[None])[0].tolist()

    def save(tmp: Path) -> dict:
        _save_adapter(encoder.transformer, tmp, name)
        return {"lora": _lora_fields(cfg), "scale": round(float(encoder.log_scale.detach().exp()), 6)}

    return Student(qe.KIND, name, encoder, frozen, score, rank,
                   f"query encoder {name} (the index's), LoRA r={cfg.lora_r} on {cfg.lora_targets} + a score scale",
                   save)


def _lora_fields(cfg: RerankerTrainConfig) -> dict:
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": list(cfg.lora_targets)}


def _save_adapter(model, tmp: Path, base: str) -> None:
    """peft's adapter files, naming the base as given rather than by this machine's path."""
    model.save_pretrained(str(tmp))
    adapter_config = tmp / "adapter_config.json"
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()),
                                          "base_model_name_or_path": base}, indent=2) + "\n")
    (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card; the manifest says it all


def pipeline_index(retrieval):
    """The index of the (retrieval) pipeline's dense retriever, opened."""
    from odqa.components.retrievers import DenseRetriever
    from odqa.index import open_index

    dense = [c for _, c in retrieval.walk() if isinstance(c, DenseRetriever)]
    if not dense:
        raise PipelineConfigError("--student query-encoder re-scores candidates with the dense index's passage "
                                  "vectors, but the pipeline's retrieval has no DenseRetriever; pass a hybrid or "
                                  "dense pipeline such as pipelines/frozen_reader.yml")
    return open_index(dense[0].index_dir)


# --- the loop -------------------------------------------------------------------------------
def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr)


def train_reranker(pipeline: str | Path, train: str | Path | list, dev: str, out: str | Path,
                   config: RerankerTrainConfig | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train a LoRA re-ranker and write its artifact to ``out``. Returns a summary (metrics, sizes)."""
    cfg = config or RerankerTrainConfig()
    out = Path(out)
    work = work_dir(out, resume)  # refuses an `out` that is not an artifact, or a left checkpoint without --resume
    from odqa.data.negatives import read_training_data

    files = [train] if isinstance(train, (str, Path)) else list(train)
    one = str(files[0]) if len(files) == 1 else None
    read = read_training_data(Path(one)) if one and not is_question_set(one) else None  # one file: read once
    from_set = one is not None and (is_question_set(one) or questions_only(read))
    if cfg.labels == "reader" and not from_set:
        raise TrainingDataError(f"--labels reader needs questions as --train (a set such as trivia-wiki:train, or "
                                f"a jsonl file of questions and answers), got {' '.join(map(str, files))}: the "
                                "teacher scores the pipeline's own candidates for each question")
    if from_set:
        examples, in_file, teacher_stats = question_set_examples(pipeline, str(files[0]), cfg, work, progress)
    else:
        examples = checked_examples(read, Path(one)) if read is not None else [
            ex for f in files for ex in read_examples(f)]
        in_file, teacher_stats = len(examples), None
        if cfg.max_examples and cfg.max_examples < len(examples):
            examples = random.Random(cfg.seed).sample(examples, cfg.max_examples)
    train = files[0] if len(files) == 1 else [str(f) for f in files]
    dev_set = build_dev_set(pipeline, dev, cfg.dev_limit, cfg.dev_candidates, progress, cache=work / DEV_CACHE)
    before = ranking_metrics(dev_set, [list(range(len(c))) for c in dev_set.candidates])

    torch.manual_seed(cfg.seed)
    student = (query_encoder_student(cfg, pipeline_index(dev_set.retrieval)) if cfg.student == "query-encoder"
               else cross_encoder_student(cfg))
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_questions)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    settings = {k: v for k, v in asdict(cfg).items() if k in RESUME_KEYS}
    settings["train"] = [str(f) if from_set else str(Path(f).resolve()) for f in files]
    with FrozenCheck(student.frozen, student.base) as check:
        trainable = [p for p in student.model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        _say(progress, f"re-ranker: {student.describe}: {n_trainable:,} trainable parameters "
                       f"({100 * n_trainable / sum(p.numel() for p in student.model.parameters()):.2f}%); "
                       f"{len(examples)} examples, {steps_per_epoch} steps/epoch, {total} steps")

        def batch_loss(idx: list[int], step: int) -> torch.Tensor:
            batch = [examples[i] for i in idx]
            if cfg.labels == "reader":
                return distill_loss(student.score, batch, cfg)
            return step_loss(student.score, batch, cfg, random.Random(cfg.seed * 1_000_003 + step))

        def evaluate() -> dict:
            after = ranking_metrics(dev_set, rerank_orders(student, dev_set, progress))
            _say(progress, f"dev MRR {after['mrr']:.4f} (retrieval order {before['mrr']:.4f}), recall@5 "
                           f"{after['recall@5']} ({before['recall@5']}), LM-input recall "
                           f"{after['lm_input_recall']} ({before['lm_input_recall']})")
            return after

        result = train_loop(work, {"model": student.model}, [{"params": trainable, "lr": cfg.lr,
                                                               "weight_decay": cfg.weight_decay}],
                            len(examples), batch_loss, evaluate, cfg, batch_size=cfg.batch_questions,
                            max_steps=cfg.max_steps, epochs=cfg.epochs, warmup=cfg.warmup, metric="mrr",
                            resume=resume, progress=progress, desc="training re-ranker", settings=settings)
    # the base's hash matched before and after: write the best adapter, never the base
    return _write_artifact(student, out, cfg, check.digest, train, from_set, teacher_stats, dev, examples, in_file,
                           dev_set, before, result.best, result.history, n_trainable, result.seconds)


def _write_artifact(student: Student, out: Path, cfg: RerankerTrainConfig, digest: str, train, from_set: bool,
                    teacher_stats: dict | None, dev, examples, in_file, dev_set: DevSet, before: dict, best: dict,
                    history: dict, n_trainable: int, seconds: float) -> dict:
    synthetic = sum(getattr(e, "synthetic", False) for e in examples)
    dev_metrics = {
        "dev": dev, "questions": len(dev_set.questions), "candidates_from": dev_set.source,
        "candidates_per_question": round(statistics.mean(len(c) for c in dev_set.candidates), 1),
        "packer": {"model": dev_set.packer.model, "template": dev_set.packer.template,
                   "context_length": dev_set.packer.context_length},
        "has_answer": "DPR has_answer on the passage text", "best_step": best["step"],
        "before": before, "after": {k: v for k, v in best.items() if k != "step"},
    }
    manifest = make_manifest(
        student.kind, backbone=None, backbone_hash=None, base_model=student.base, base_model_hash=digest,
        data={"train": train if isinstance(train, list) else str(train),
              "synthetic": {0: False, len(examples): True}.get(synthetic, "mixed"),
              "labels": {"answer": "positives hold an accepted answer (has_answer)" if from_set
                         else "the file's positives and hard negatives",
                         "reader": "the frozen reader's log p(answer | question, passage), softmax at "
                                   f"T={cfg.temperature} (KL)"}[cfg.labels],
              "synthetic_examples": synthetic, "examples": len(examples), "examples_in_file": in_file,
              **({"teacher": teacher_stats} if teacher_stats else {}),
              "steps": history["loss"][-1][0] if history["loss"] else 0},
        dev_metrics=dev_metrics, student=cfg.student, trainable_params=n_trainable, train_seconds=round(seconds, 1),
        config=asdict(cfg), dev_history=history["dev"],
    )
    with ArtifactWriter(out) as tmp:
        manifest.update(student.save(tmp))
        plot_curves(history, tmp / "curves.png", f"re-ranker ({cfg.student}): {'KL to the teacher' if cfg.labels == 'reader' else 'listwise CE'} and dev MRR", metric="mrr",
                    dev_label="dev MRR (re-ranked)", baseline=before["mrr"], baseline_label="retrieval order")
        size = sum(f.stat().st_size for f in tmp.iterdir()) + 4096
        manifest["size_bytes"] = size
        write_manifest(tmp, manifest)
    if size > COMMIT_LIMIT:
        print(f"warning: the artifact is {size / 2**20:.1f} MB, over the {COMMIT_LIMIT / 2**20:.0f} MB that is "
              "committed to git; lower --lora-r or rebuild it by command", file=sys.stderr)
    return {"out": str(out), "manifest": manifest, "size_bytes": size, "trainable_params": n_trainable}


def metrics_table(dev_metrics: dict) -> str:
    """A small before/after table of the dev metrics in a manifest."""
    before, after = dev_metrics["before"], dev_metrics["after"]
    rows = [f"{'metric':<16}{'retrieval order':>16}{'re-ranked':>12}"]
    for key in before:
        rows.append(f"{key:<16}{before[key]:>16}{after[key]:>12}")
    return "\n".join(rows)
