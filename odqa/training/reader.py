"""Prompt tuning of the frozen reader (Lester et al., 2021; paper Section 3).

Only a soft prompt of P vectors is trained; the backbone stays frozen and in eval mode,
and :class:`~odqa.training.frozen.FrozenCheck` proves its weights did not move.
The reader learns from the contexts the pipeline's own retriever -> ranker -> packer
produce for each training question, as the paper does, packed for the budget the tuned
reader will have (its template, its soft prompt, its context length).

Contexts (cached, resumable) -> :func:`odqa.training.loop.train_loop` (AdamW on the prompt,
periodic dev EM with early stopping, atomic checkpoints in ``OUT.work/``) -> the artifact
(``soft_prompt.safetensors`` + ``manifest.json`` + ``curves.png``).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from odqa.configs import ReaderTrainConfig
from odqa.lm.likelihood import target_inputs, target_logprobs
from odqa.errors import OdqaError, TrainingDataError
from odqa.metrics import has_answer, qa_scores
from odqa.runs import RunWriter, read_records
from odqa.artifacts import ArtifactWriter, make_manifest
from odqa.training.checkpoints import work_dir
from odqa.training.frozen import FrozenCheck
from odqa.training.loop import plot_curves, train_loop


# --- contexts ------------------------------------------------------------------------------
def context_pipeline(qa, template: str, soft_prompt_dir: str):
    """The QA pipeline up to its packer, which packs for the tuned reader's template and prompt."""
    from odqa.api import pipeline_from_dict

    data = qa.pipeline.to_dict()
    data["components"][qa.packer]["init_parameters"].update(template=template, soft_prompt=soft_prompt_dir)
    pipe = pipeline_from_dict(data)  # a fresh packer, budgeting for the tuned reader
    pipe.remove_component(qa.reader)
    return pipe


def build_contexts(pipe, packer_name: str, items: list[dict], path: Path, desc: str) -> list[dict]:
    """Pack a context for every ``{"id", "question", "answers"}`` item, resumably (one jsonl line each)."""
    from tqdm.auto import tqdm

    from odqa.api import unwrap_error
    from haystack.core.errors import PipelineRuntimeError

    done = {str(r["id"]): r for r in read_records(path)}
    todo = [it for it in items if str(it["id"]) not in done]
    with RunWriter(path) as writer:
        for it in tqdm(todo, desc=desc, unit="q", disable=not todo):
            try:
                out = pipe.run({"query": it["question"]}, include_outputs_from={packer_name})
            except PipelineRuntimeError as e:
                raise unwrap_error(e) from None
            docs = out[packer_name]["documents"]
            rec = {**it, "passages": [[d.meta.get("title", ""), d.content] for d in docs],
                   "answer_in_context": any(has_answer(d.content, it["answers"]) for d in docs)}
            writer.write(rec)
            done[str(it["id"])] = rec
    return [done[str(it["id"])] for it in items]


# --- batches -------------------------------------------------------------------------------
def newline_id(tok) -> int | None:
    """The token that ends an answer (a trained target ends with it), when ``\n`` is one token."""
    newline = tok.encode("\n", add_special_tokens=False)
    return newline[0] if len(newline) == 1 else None


def encode_example(tok, template, rec: dict, answer: str | None, newline_id: int | None) -> tuple[list[int], int]:
    """Token ids of prompt (+ answer + newline when training) and the prompt's length."""
    from odqa.lm.prompting import encode_parts

    prefix, body = encode_parts(tok, template, rec["question"], [tuple(p) for p in rec["passages"]])
    prompt = prefix + body  # exactly the reader's input
    if answer is None:
        return prompt, len(prompt)
    target = tok(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if newline_id is not None:
        target = target + [newline_id]
    return prompt + target, len(prompt)


def batch_loss(model, soft, batch: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, the soft prompt prepended, right padding."""
    return answer_loss(model, *target_inputs(model, soft, batch, pad_id))


def answer_loss(model, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the labelled tokens (see :func:`odqa.lm.likelihood.target_logprobs`)."""
    logp, _ = target_logprobs(model, embeds, mask, labels)
    return -logp.mean()


# --- dev evaluation --------------------------------------------------------------------------
def dev_scores(reader_settings: dict, soft_dir: Path, contexts: list[dict]) -> dict:
    """EM/F1 of the reader with the soft prompt in ``soft_dir`` on packed dev contexts."""
    from haystack import Document

    from odqa.components.readers import FrozenLMReader

    # no prefix cache: the prompt changes between evaluations, and each would stay cached
    reader = FrozenLMReader(**reader_settings, soft_prompt=str(soft_dir) if soft_dir else None, prefix_cache=False)
    preds = [reader.run(query=rec["question"], documents=[Document(content=text, meta={"title": title})
                                                           for title, text in rec["passages"]])["answers"][0].data
             for rec in contexts]
    return qa_scores(preds, [rec["answers"] for rec in contexts])


# --- the run -------------------------------------------------------------------------------
def init_prompt(backbone, length: int):
    """Lester et al. initialise from vocabulary embeddings; we use the instruction's tokens
    (cycled to ``length``), a task description the frozen LM already reads well."""
    from odqa.lm.prompting import INSTRUCTION
    from odqa.lm.soft_prompt import SoftPrompt

    ids = backbone.tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"]
    ids = [ids[i % len(ids)] for i in range(length)]
    with torch.no_grad():
        return SoftPrompt.from_vocab(backbone.model.get_input_embeddings(), torch.tensor(ids, device=backbone.device))


def train_reader(pipeline: str, train_items: list[dict], dev_items: list[dict], out: str | Path,
                 config: ReaderTrainConfig, train_source: dict, resume: bool = False,
                 progress: bool = True) -> dict:
    """Prompt-tune the pipeline's reader. ``train_items``/``dev_items``: ``{"id", "question", "answers"}``.

    Returns the artifact's manifest. The work dir ``<out>.work/`` holds contexts and the
    checkpoint; rerun with ``resume=True`` after a kill to continue.
    """
    import odqa

    from odqa.lm.backbone import load_backbone
    from odqa.lm.prompting import get_template

    out = Path(out)
    work = work_dir(out, resume)
    work.mkdir(parents=True, exist_ok=True)
    if not train_items:
        raise TrainingDataError("no training questions; pass a --train file with at least one question")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    train_items = rng.sample(train_items, min(config.max_examples, len(train_items)))
    dev_items = dev_items[: config.dev_limit] if config.dev_limit else dev_items

    qa = odqa.load(pipeline)
    if qa.packer is None:
        raise OdqaError(f"{pipeline}: the pipeline has no ContextPacker, so it cannot pack training contexts")
    reader = qa.pipeline.get_component(qa.reader)
    if getattr(reader, "ensemble", False):
        raise OdqaError(f"{pipeline}: its reader reads each passage apart (ensemble: true), and prompt tuning packs "
                        "the passages together; train on the same pipeline with ensemble: false in its packer and "
                        "reader, then name the prompt in this one")
    backbone = load_backbone(reader.model, reader.dtype)
    model, tok = backbone.model, backbone.tokenizer
    template = get_template(config.template)
    with FrozenCheck(model, reader.model) as frozen:
        soft = init_prompt(backbone, config.prompt_length)
        init_dir = work / "init-prompt"
        if not (init_dir / "soft_prompt.safetensors").exists():
            soft.save(init_dir, {"backbone": reader.model, "note": "initial prompt, for packing budgets"})
        pipe = context_pipeline(qa, config.template, str(init_dir))
        train_ctx = build_contexts(pipe, qa.packer, train_items, work / "contexts-train.jsonl", "packing train contexts")
        dev_ctx = build_contexts(pipe, qa.packer, dev_items, work / "contexts-dev.jsonl", "packing dev contexts")
        stop = newline_id(tok)
        examples = [encode_example(tok, template, r, r["answers"][0], stop) for r in train_ctx]
        limit = reader.context_length - config.prompt_length
        too_long = sum(len(ids) > limit for ids, _ in examples)

        reader_settings = dict(model=reader.model, template=config.template, context_length=reader.context_length,
                               max_new_tokens=reader.max_new_tokens, dtype=reader.dtype)

        def evaluate_now() -> dict:
            tmp = work / "eval-prompt"
            soft.save(tmp, {"backbone": reader.model})
            try:
                return dev_scores(reader_settings, tmp, dev_ctx)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        def batch_loss_of(idx: list[int], step: int) -> torch.Tensor:
            return batch_loss(model, soft, [examples[i] for i in idx], tok.pad_token_id)

        result = train_loop(work, {"prompt": soft}, [{"params": list(soft.parameters()), "lr": config.lr}],
                            len(examples), batch_loss_of, evaluate_now, config, batch_size=config.batch_size,
                            max_steps=config.max_steps, epochs=config.epochs, metric="em", resume=resume,
                            progress=progress, desc="prompt tuning")
        step, history, best, stopped_early = result.step, result.history, result.best, result.stopped_early

    train_seconds = result.seconds
    n_ctx = max(len(train_ctx), 1)
    synthetic = train_source.get("synthetic", False)
    manifest = make_manifest(
        "soft_prompt", backbone=reader.model, backbone_hash=frozen.digest,
        data={**train_source, "examples": len(examples), "answer_in_context": round(100.0 * sum(
            r["answer_in_context"] for r in train_ctx) / n_ctx, 1), "over_budget": too_long,
              "dev": f"{len(dev_ctx)} questions"},
        dev_metrics={"best": best, "curve": history["dev"]},
        template=config.template, context_length=reader.context_length, max_new_tokens=reader.max_new_tokens,
        pipeline=str(pipeline), config=asdict(config), steps=step, stopped_early=stopped_early,
        train_seconds=round(train_seconds, 1), synthetic=synthetic,
    )
    with ArtifactWriter(out) as tmp:
        soft.save(tmp, manifest)
        plot_curves(history, tmp / "curves.png",
                    f"soft prompt ({config.prompt_length} vectors) on {'synthetic' if synthetic else 'real'} data")
    return json.loads((out / "manifest.json").read_text())
