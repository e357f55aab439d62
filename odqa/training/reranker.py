"""Train the cross-encoder re-ranker (paper, Section 3) as a LoRA adapter on a frozen encoder.

The base encoder (MiniLM by default) is loaded as a one-output sequence classifier and frozen;
only LoRA matrices on its attention and dense layers, plus the classification head, learn.
The artifact holds just those (``adapter_model.safetensors`` + ``adapter_config.json``) with
``manifest.json`` and ``curves.png``: a few MB, while the base is resolved by name at load time.

The loop is written out: batches of B questions, each with 1 positive and k hard negatives
-> listwise softmax cross-entropy -> AdamW with linear warmup and decay -> periodic dev
evaluation with early stopping on MRR -> atomic checkpoints in ``<out>.ckpt/`` (``--resume``).

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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from odqa.configs import RerankerTrainConfig
from odqa.errors import ArtifactMismatchError, PipelineConfigError, TrainingDataError
from odqa.metrics import has_answer
from odqa.runs import atomic_write_bytes, check_replaceable, file_sha256
from odqa.artifacts import ArtifactWriter, make_manifest, write_manifest
from odqa.training.checkpoints import load_checkpoint, save_checkpoint
from odqa.data.negatives import Ctx, TrainExample
from odqa.lm.cross_encoder import KIND, load_base, pair_text, quiet_transformers, score_pairs
from odqa.training.frozen import FrozenCheck

KS = (1, 5, 10, 20)
DEV_CACHE = "dev-set.json"  # the dev questions' retrieved candidates, beside the checkpoint
COMMIT_LIMIT = 5 * 1024 * 1024  # artifacts above this are rebuilt by command, not committed (DESIGN.md)


# settings a resumed run must share with its checkpoint (epochs / max_steps may grow)
RESUME_KEYS = ("base", "batch_questions", "negatives", "lr", "weight_decay", "lora_r", "lora_alpha",
               "lora_dropout", "lora_targets", "max_length", "max_examples", "seed")


def checkpoint_dir(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its checkpoint: beside it, never inside the artifact."""
    out = Path(out)
    return out.parent / f"{out.name}.ckpt"


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

    path = Path(path)
    examples = read_training_data(path)
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


def step_loss(model, tokenizer, batch: list[TrainExample], cfg: RerankerTrainConfig, rng: random.Random):
    """Listwise softmax cross-entropy: each question's positive against its negatives."""

    groups = [make_group(ex, batch, cfg.negatives, rng) for ex in batch]
    questions = [ex.question for ex, g in zip(batch, groups) for _ in g]
    passages = [pair_text(c.title, c.text) for g in groups for c in g]
    ids = tokenizer(questions, passages, truncation=True, max_length=cfg.max_length)["input_ids"]
    # forward in micro-batches of similar length (padding to the step's longest pair wastes ~half
    # the compute on CPU); one backward through all of them
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    parts, where = [], []
    for start in range(0, len(order), cfg.micro_batch):
        idx = order[start:start + cfg.micro_batch]
        enc = tokenizer([questions[i] for i in idx], [passages[i] for i in idx], truncation=True,
                        max_length=cfg.max_length, padding=True, return_tensors="pt")
        parts.append(model(**enc.to(model.device)).logits[:, 0])
        where += idx
    logits = torch.cat(parts)[torch.argsort(torch.tensor(where, device=model.device))]  # back to pair order
    width = max(len(g) for g in groups)
    scores = logits.new_full((len(groups), width), float("-inf"))
    start = 0
    for i, g in enumerate(groups):
        scores[i, : len(g)] = logits[start:start + len(g)]
        start += len(g)
    return torch.nn.functional.cross_entropy(scores, scores.new_zeros(len(groups), dtype=torch.long))


# --- dev evaluation -------------------------------------------------------------------------
@dataclass
class DevSet:
    """Dev questions with the candidates the pipeline's retrieval stages return for each."""

    questions: list  # odqa.data.questions.Question
    candidates: list[list]  # haystack Documents, in retrieval order
    flags: list[list[bool]]  # has_answer of each candidate's text
    packer: object  # the pipeline's ContextPacker
    source: str  # the stage the candidates come from


def _documents_sender(pipeline, name: str) -> str | None:
    senders = [u for u, _, data in pipeline.graph.in_edges(name, data=True)
               if data.get("to_socket") is not None and data["to_socket"].name == "documents"]
    return senders[0] if senders else None


def retrieval_pipeline(pipeline_path: str | Path):
    """``(retrieval-only pipeline, name of its last stage, the packer)``: the stages up to what feeds
    the ranker (or, without one, the packer), so dev candidates are what a ranker would re-order."""
    import networkx
    from haystack import Pipeline

    from odqa.api import load_pipeline
    from odqa.components.packing import ContextPacker
    from odqa.components.rankers import CrossEncoderRanker

    pipeline = load_pipeline(pipeline_path)
    packers = [n for n, c in pipeline.walk() if isinstance(c, ContextPacker)]
    if not packers:
        raise PipelineConfigError(f"{pipeline_path}: the pipeline has no ContextPacker; the re-ranker's dev "
                                  "evaluation packs candidates with the pipeline's packer, so pass a frozen-reader "
                                  "pipeline such as pipelines/frozen_reader.yml")
    source = _documents_sender(pipeline, packers[0])
    if source and isinstance(pipeline.get_component(source), CrossEncoderRanker):
        source = _documents_sender(pipeline, source)
    if source is None:
        raise PipelineConfigError(f"{pipeline_path}: nothing sends documents to the packer '{packers[0]}'; "
                                  "connect the retrievers (or their join) to it")
    keep = networkx.ancestors(pipeline.graph, source) | {source}
    data = pipeline.to_dict()
    data["components"] = {k: v for k, v in data["components"].items() if k in keep}
    data["connections"] = [c for c in data["connections"]
                           if c["sender"].split(".")[0] in keep and c["receiver"].split(".")[0] in keep]
    retrieval = Pipeline.from_dict(data, allowed_modules=["odqa.*"])
    return retrieval, source, pipeline.get_component(packers[0])


def build_dev_set(pipeline_path: str | Path, dev: str, limit: int | None = None,
                  max_candidates: int | None = None, progress: bool = True, cache: Path | None = None) -> DevSet:
    """Dev questions and their retrieved candidates. With ``cache``, they are read from that file
    when it was written for the same pipeline file, dev set, limit and candidate count (so a
    resumed run, or one on another machine without the index, skips retrieval), else written there."""
    from haystack import Document
    from tqdm.auto import tqdm

    from odqa.data.questions import Question, dedup, load_questions

    key = {"pipeline_sha256": file_sha256(pipeline_path), "dev": dev,
           "limit": limit, "max_candidates": max_candidates}
    saved = json.loads(cache.read_text()) if cache is not None and cache.exists() else None
    retrieval, source, packer = retrieval_pipeline(pipeline_path)
    packer.warm_up()
    if saved and saved.get("key") == key:
        questions = [Question(**q) for q in saved["questions"]]
        candidates = [[Document.from_dict(d) for d in docs] for docs in saved["candidates"]]
    else:
        questions = dedup(load_questions(dev, require_answers=True))[:limit]
        if not questions:
            raise TrainingDataError(f"dev set '{dev}' has no questions; pass e.g. fanoutqa-wiki:dev")
        candidates = []
        for q in tqdm(questions, desc="dev candidates", unit="q", disable=not progress):
            docs = retrieval.run({"query": q.question}, include_outputs_from={source})[source]["documents"]
            candidates.append(docs[:max_candidates] if max_candidates else docs)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache, json.dumps({"key": key, "questions": [q.to_dict() for q in questions],
                                                  "candidates": [[d.to_dict() for d in docs] for docs in candidates]
                                                  }).encode("utf-8"))
    flags = [[has_answer(d.content, q.answers) for d in docs] for q, docs in zip(questions, candidates)]
    return DevSet(questions, candidates, flags, packer, source)


def ranking_metrics(dev: DevSet, orders: list[list[int]]) -> dict:
    """recall@k and MRR over the candidates in ``orders`` (indices into each question's candidates),
    and LM-input recall: the answer is in what the packer keeps of that order. Recall in percent."""
    recall = {k: [] for k in KS}
    rr, lm_input = [], []
    for q, docs, flags, order in zip(dev.questions, dev.candidates, dev.flags, orders):
        ranked = [flags[i] for i in order]
        for k in KS:
            recall[k].append(any(ranked[:k]))
        first = next((r for r, f in enumerate(ranked) if f), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        packed = dev.packer.run(query=q.question, documents=[docs[i] for i in order])["documents"]
        lm_input.append(any(has_answer(d.content, q.answers) for d in packed))
    pct = lambda xs: round(100 * sum(xs) / len(xs), 2)  # noqa: E731
    return {**{f"recall@{k}": pct(v) for k, v in recall.items()}, "mrr": round(statistics.mean(rr), 4),
            "lm_input_recall": pct(lm_input)}


def rerank_orders(model, tokenizer, dev: DevSet, cfg: RerankerTrainConfig, progress: bool = True) -> list[list[int]]:
    from tqdm.auto import tqdm


    was_training = model.training
    model.eval()
    orders = []
    for q, docs in tqdm(list(zip(dev.questions, dev.candidates)), desc="dev re-ranking", unit="q", leave=False,
                        disable=not progress):
        pairs = [(q.question, pair_text(d.meta.get("title", ""), d.content)) for d in docs]
        scores = score_pairs(model, tokenizer, pairs, cfg.eval_batch_size, cfg.max_length)
        orders.append(sorted(range(len(docs)), key=lambda i: -scores[i]))
    model.train(was_training)
    return orders


# --- curves ---------------------------------------------------------------------------------
def plot_curves(history: dict, before_mrr: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, losses = zip(*history["loss"]) if history["loss"] else ((), ())
    ax1.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    w = max(1, len(losses) // 20)
    if len(losses) > w:
        smooth = [statistics.mean(losses[max(0, i - w + 1):i + 1]) for i in range(len(losses))]
        ax1.plot(steps, smooth, lw=1.5, label=f"mean of {w}")
    ax1.set(xlabel="step", ylabel="listwise CE", title="training loss")
    ax1.legend()
    ax2.plot([d["step"] for d in history["dev"]], [d["mrr"] for d in history["dev"]], "o-", label="re-ranked")
    ax2.axhline(before_mrr, color="gray", ls="--", label="retrieval order")
    ax2.set(xlabel="step", ylabel="MRR", title="dev MRR")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the loop -------------------------------------------------------------------------------
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr)


def train_reranker(pipeline: str | Path, train: str | Path | list, dev: str, out: str | Path,
                   config: RerankerTrainConfig | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train a LoRA re-ranker and write its artifact to ``out``. Returns a summary (metrics, sizes)."""
    from peft import get_peft_model
    from tqdm.auto import tqdm

    cfg = config or RerankerTrainConfig()
    out, ckpt = Path(out), checkpoint_dir(out)
    check_replaceable(out, None, "a trained artifact")  # before any training, not after it
    files = [train] if isinstance(train, (str, Path)) else list(train)
    examples = [ex for f in files for ex in read_examples(f)]
    train = files[0] if len(files) == 1 else [str(f) for f in files]
    in_file = len(examples)
    if cfg.max_examples and cfg.max_examples < len(examples):
        examples = random.Random(cfg.seed).sample(examples, cfg.max_examples)
    dev_set = build_dev_set(pipeline, dev, cfg.dev_limit, cfg.dev_candidates, progress, cache=ckpt / DEV_CACHE)
    before = ranking_metrics(dev_set, [list(range(len(c))) for c in dev_set.candidates])

    torch.manual_seed(cfg.seed)
    base, tokenizer, frozen, fresh = load_base(cfg.base)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_questions)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    settings = {k: v for k, v in asdict(cfg).items() if k in RESUME_KEYS}
    settings["train"] = [str(Path(f).resolve()) for f in files]
    with FrozenCheck(frozen, cfg.base) as check:
        with quiet_transformers():
            model = get_peft_model(base, lora_config(cfg, fresh))
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        n_trainable = sum(p.numel() for p in trainable.values())
        _say(progress, f"re-ranker: base {cfg.base}, LoRA r={cfg.lora_r} on {cfg.lora_targets} + "
                       f"{_head_modules(fresh)}: {n_trainable:,} trainable parameters "
                       f"({100 * n_trainable / sum(p.numel() for p in model.parameters()):.2f}%); "
                       f"{len(examples)} examples, {steps_per_epoch} steps/epoch, {total} steps")
        optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def schedule(s: int) -> float:  # linear warmup, then linear decay to 0 at the last step
            warm = max(1, int(cfg.warmup * total))
            return (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        state = {"step": 0, "history": {"loss": [], "lr": [], "dev": []}, "best": None, "bad_evals": 0,
                 "stopped": False, "seconds": 0.0}
        saved = load_checkpoint(ckpt) if resume else None
        if saved:
            for key, value in settings.items():
                if saved["settings"].get(key) != value:
                    raise ArtifactMismatchError(
                        f"checkpoint '{ckpt}' was made with {key}={saved['settings'].get(key)!r}, but this run has "
                        f"{value!r}; resume with the same settings, or drop --resume to start over")
            _restore(trainable, saved["model"], ckpt)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = {k: saved[k] for k in state}
            _say(progress, f"resuming from step {state['step']} ({ckpt})")
        elif resume:
            _say(progress, f"no checkpoint in {ckpt}; starting from step 0")

        def checkpoint() -> None:
            save_checkpoint(ckpt, {"settings": settings, "model": _snapshot(trainable),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state})

        history = state["history"]
        model.train()
        started = time.perf_counter()
        bar = tqdm(total=total, initial=min(state["step"], total), desc="training re-ranker", unit="step",
                   disable=not progress)
        while state["step"] < total and not state["stopped"]:
            step = state["step"]
            epoch, pos = divmod(step, steps_per_epoch)
            order = _epoch_order(len(examples), cfg.seed, epoch)
            batch = [examples[i] for i in order[pos * cfg.batch_questions:(pos + 1) * cfg.batch_questions]]
            loss = step_loss(model, tokenizer, batch, cfg, random.Random(cfg.seed * 1_000_003 + step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] = step = step + 1
            history["loss"].append([step, round(loss.item(), 5)])
            history["lr"].append([step, scheduler.get_last_lr()[0]])
            recent = [v for _, v in history["loss"][-20:]]
            bar.update(1)
            bar.set_postfix(loss=f"{statistics.mean(recent):.3f}", epoch=epoch + 1)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step % steps_per_epoch == 0 or step == total:
                after = ranking_metrics(dev_set, rerank_orders(model, tokenizer, dev_set, cfg, progress))
                history["dev"].append({"step": step, **after})
                best = state["best"]
                if best is None or after["mrr"] > best["metrics"]["mrr"]:
                    state["best"] = {"step": step, "metrics": after, "adapter": _snapshot(trainable)}
                    state["bad_evals"] = 0
                else:
                    state["bad_evals"] += 1
                    state["stopped"] = state["bad_evals"] >= cfg.patience
                bar.write(f"step {step}: dev MRR {after['mrr']:.4f} (retrieval order {before['mrr']:.4f}), "
                          f"recall@5 {after['recall@5']} ({before['recall@5']}), LM-input recall "
                          f"{after['lm_input_recall']} ({before['lm_input_recall']})"
                          + ("; no gain for %d evaluations, stopping" % cfg.patience if state["stopped"] else ""))
            if step % cfg.save_every == 0 or step == total or state["stopped"]:
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
        bar.close()
        state["seconds"] += time.perf_counter() - started
        best = state["best"]
        if best is None:  # only when a resumed run had already finished without any evaluation
            raise TrainingDataError(f"the run in '{ckpt}' has no dev evaluation to pick an adapter by; "
                                    "raise --max-steps or --epochs and resume")
        _restore(trainable, best["adapter"], ckpt)
    # the base's hash matched before and after: write the best adapter, never the base
    return _write_artifact(model, out, cfg, check.digest, train, dev, examples, in_file, dev_set, before, best,
                           history, n_trainable, state["seconds"], fresh)


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def _restore(params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    if set(tensors) != set(params):
        raise ArtifactMismatchError(f"checkpoint '{ckpt}' holds other trainable tensors than this model; "
                                    "drop --resume to start over")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])


def _write_artifact(model, out: Path, cfg: RerankerTrainConfig, digest: str, train, dev, examples, in_file,
                    dev_set: DevSet, before: dict, best: dict, history: dict, n_trainable: int, seconds: float,
                    fresh: set[str]) -> dict:
    synthetic = sum(e.synthetic for e in examples)
    dev_metrics = {
        "dev": dev, "questions": len(dev_set.questions), "candidates_from": dev_set.source,
        "candidates_per_question": round(statistics.mean(len(c) for c in dev_set.candidates), 1),
        "packer": {"model": dev_set.packer.model, "template": dev_set.packer.template,
                   "context_length": dev_set.packer.context_length},
        "has_answer": "DPR has_answer on the passage text", "best_step": best["step"],
        "before": before, "after": best["metrics"],
    }
    manifest = make_manifest(
        KIND, backbone=None, backbone_hash=None, base_model=cfg.base, base_model_hash=digest,
        data={"train": train if isinstance(train, list) else str(train),
              "synthetic": {0: False, len(examples): True}.get(synthetic, "mixed"),
              "synthetic_examples": synthetic, "examples": len(examples), "examples_in_file": in_file,
              "steps": history["loss"][-1][0] if history["loss"] else 0},
        dev_metrics=dev_metrics,
        lora={"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": list(cfg.lora_targets),
              "modules_to_save": _head_modules(fresh)},
        trainable_params=n_trainable, train_seconds=round(seconds, 1), max_length=cfg.max_length,
        tokenizer="base", config=asdict(cfg), dev_history=history["dev"],
    )
    with ArtifactWriter(out) as tmp:
        model.save_pretrained(str(tmp))
        adapter_config = tmp / "adapter_config.json"  # name the base as given, not by this machine's path
        adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()),
                                              "base_model_name_or_path": cfg.base}, indent=2) + "\n")
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card; the manifest says it all
        plot_curves(history, before["mrr"], tmp / "curves.png")
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
