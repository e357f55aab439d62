"""``odqa train idpt``: ID-PT and its two baselines on one multitask mixture (paper Section 2).

One written-out loop trains three systems with the same data, step budget and batch size:

``--mode idpt``      only the :class:`~odqa.lm.prompt_generator.PromptGenerator` (encoder prompt,
                     cross-attention, projection); the LM and the encoder stay frozen.
``--mode prompt``    one shared :class:`~odqa.lm.soft_prompt.SoftPrompt` (plain prompt tuning).
``--mode finetune``  a *copy* of the backbone, every weight (the T0++-style baseline), saved
                     outside the repository (default ``$ODQA_HOME/finetuned/NAME``), never over
                     the shared frozen backbone.

Every mode runs inside :class:`~odqa.training.frozen.FrozenCheck` on the backbone *and* the
encoder: their weight hashes are the same before and after, and recorded in the manifest.
Loss is on the target tokens only (:func:`odqa.training.reader.batch_loss`); the dev score
(mean of the per-task scores on the dev split, held-out tasks never included) is computed
every ``eval_every`` steps, the best state is kept, and training stops early after
``patience`` evaluations without improvement. Checkpoints make ``--resume`` work.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch

from odqa.configs import IDPTTrainConfig
from odqa.errors import OdqaError, TrainingDataError
from odqa.artifacts import ArtifactWriter, make_manifest, write_manifest
from odqa.training.checkpoints import work_dir
from odqa.lm.backbone import weights_hash
from odqa.training.frozen import FrozenCheck
from odqa.training.loop import plot_curves, train_loop

REPO = Path(__file__).resolve().parents[2]

class _Prefix:
    """Prepends per-example prompts ``[batch, P, d]`` (or nothing) to input embeddings, for ``batch_loss``."""

    def __init__(self, prompts: torch.Tensor | None):
        self.prompts = prompts
        self.length = 0 if prompts is None else int(prompts.shape[1])

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds if self.prompts is None else torch.cat([self.prompts.to(embeds.dtype), embeds], dim=1)


def default_finetune_out(backbone: str) -> Path:
    from odqa.resources import odqa_home

    return odqa_home() / "finetuned" / f"{Path(backbone).name}-multitask"


def check_finetune_out(out: Path, backbone: str) -> None:
    """A fine-tuned copy is big and is not a small learned module: never in the repo, never over the backbone."""
    from odqa.resources import model_dir

    out = out.expanduser().resolve()
    if out == REPO or REPO in out.parents:
        raise OdqaError(f"--out '{out}' is inside the repository; a fine-tuned backbone (~0.5 GB) is saved "
                        f"outside it, e.g. the default {default_finetune_out(backbone)}")
    base = Path(model_dir(backbone)).expanduser().resolve()
    if out == base or base in out.parents or out in base.parents:
        raise OdqaError(f"--out '{out}' is the backbone's own directory ({base}); the shared frozen backbone is "
                        "never written; pass another directory")


def encode(tok, inputs: str, target: str | None, newline_id: int | None,
           max_input_tokens: int) -> tuple[list[int], int]:
    """LM token ids of input (+ `` target`` + newline when training) and the input's length."""
    from odqa.lm.prompt_generator import truncate_ids

    prompt = truncate_ids(tok(inputs)["input_ids"], max_input_tokens)
    if target is None:
        return prompt, len(prompt)
    ids = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
    return prompt + ids + ([newline_id] if newline_id is not None else []), len(prompt)


def _dev_subset(examples, per_task: int):
    seen: dict[str, int] = {}
    out = []
    for e in examples:
        if e.held_out or seen.get(e.task, 0) >= per_task:
            continue
        seen[e.task] = seen.get(e.task, 0) + 1
        out.append(e)
    return out


def train_idpt(train_examples, dev_examples, out: str | Path, config: IDPTTrainConfig, backbone_name: str,
               data_source: dict, resume: bool = False, progress: bool = True) -> dict:
    """Train one mode on multitask examples (:class:`~odqa.data.multitask.MultitaskExample`).

    Returns the artifact's manifest. ``<out>.work/`` holds the checkpoint; rerun with
    ``resume=True`` after a kill to continue.
    """
    from odqa.components.idpt import IDPTLM
    from odqa.lm.prompt_generator import PromptGenerator, load_encoder
    from odqa.eval.multitask import score_examples, summarize
    from odqa.lm.backbone import Backbone, load_backbone
    from odqa.training.reader import batch_loss, init_prompt, newline_id

    out = Path(out)
    if config.mode == "finetune":
        check_finetune_out(out, backbone_name)
    work = work_dir(out, resume)
    train = [e for e in train_examples if not e.held_out]
    if not train:
        raise TrainingDataError("no training examples (held-out tasks are never trained on); pass a mixture "
                                "with a train split")
    dev = _dev_subset(dev_examples, config.dev_per_task)
    if not dev:
        raise TrainingDataError("no dev examples of a training task; the dev score picks the best step")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    backbone = load_backbone(backbone_name)
    model, tok = backbone.model, backbone.tokenizer
    encoder, enc_tok = load_encoder(config.encoder)
    examples = [(*encode(tok, e.inputs, e.targets, newline_id(tok), config.max_input_tokens), e.inputs)
                for e in train]
    with FrozenCheck(model, backbone_name) as lm_check, FrozenCheck(encoder, config.encoder) as enc_check:
        # the trained module, and how a batch gets its prompt
        generator = soft = tuned = None
        if config.mode == "idpt":
            generator = PromptGenerator(encoder, backbone.hidden_size, config.prompt_length,
                                        config.encoder_prompt_length, config.attn_dim, config.heads,
                                        init_prompt=init_prompt(backbone, config.prompt_length).prompt)
            trained = generator
            prompt_params = [generator.prompt_bias, generator.encoder_prompt]
            net_params = [p for n, p in generator.named_parameters() if n not in ("prompt_bias", "encoder_prompt")]
            groups = [{"params": prompt_params, "lr": config.prompt_lr}, {"params": net_params, "lr": config.lr}]
        elif config.mode == "prompt":
            soft = trained = init_prompt(backbone, config.prompt_length)
            groups = [{"params": list(soft.parameters()), "lr": config.prompt_lr}]
        else:
            tuned = trained = copy.deepcopy(model)  # the shared backbone is never handed to the optimizer
            tuned.requires_grad_(True)
            groups = [{"params": list(tuned.parameters()), "lr": config.lr}]
        lm = tuned if tuned is not None else model
        trainable = sum(p.numel() for g in groups for p in g["params"])

        def prefix_for(batch) -> _Prefix:
            if generator is not None:
                enc = generator.tokenize(enc_tok, [text for _, _, text in batch])
                return _Prefix(generator(enc["input_ids"], enc["attention_mask"]))
            if soft is not None:
                return _Prefix(soft.prompt.unsqueeze(0).expand(len(batch), -1, -1))
            return _Prefix(None)

        def batch_loss_of(idx: list[int], step: int):
            batch = [examples[i] for i in idx]
            return batch_loss(lm, prefix_for(batch), [(ids, n) for ids, n, _ in batch], tok.pad_token_id)

        def evaluate_now() -> dict:
            scorer = IDPTLM(backbone_name, max_new_tokens=config.max_new_tokens,
                            max_input_tokens=config.max_input_tokens)
            scorer._backbone = Backbone(backbone_name, lm, tok) if tuned is not None else backbone
            scorer._generator, scorer._soft, scorer._enc_tok = generator, soft, enc_tok
            scorer.kind = config.mode
            s = summarize(score_examples(scorer, dev, progress=False))
            return {"score": s["seen_average"], "em": s["em"], "tasks": {
                t: v["score"] for t, v in s["tasks"].items()}, "examples": s["examples"]}

        # max_steps is the whole budget (the same for every mode): the loop's max_steps overrides epochs
        result = train_loop(work, {"trained": trained}, groups, len(examples), batch_loss_of, evaluate_now, config,
                            batch_size=config.batch_size, max_steps=config.max_steps, epochs=0,
                            metric="score", resume=resume, progress=progress, desc=f"training ({config.mode})",
                            settings=asdict(config))

    step, history, best, train_seconds = result.step, result.history, result.best, result.seconds
    frozen_lm = sum(p.numel() for p in model.parameters())
    params = generator.parameter_counts() if generator is not None else {"total": trainable}
    manifest = make_manifest(
        {"idpt": "idpt_generator", "prompt": "soft_prompt", "finetune": "finetuned_lm"}[config.mode],
        backbone=backbone_name, backbone_hash=lm_check.digest, data={
            **data_source, "train_examples": len(train), "dev_examples": len(dev),
            "train_tasks": sorted({e.task for e in train}),
            "held_out_dropped": len(train_examples) - len(train)},
        dev_metrics={"best": best, "curve": history["dev"]},
        mode=config.mode, encoder=config.encoder, encoder_hash=enc_check.digest, config=asdict(config),
        steps=step, stopped_early=result.stopped_early, train_seconds=round(train_seconds, 1),
        seconds_per_step=round(train_seconds / max(step, 1), 2), trainable_params=params,
        frozen_params={"lm": frozen_lm if config.mode != "finetune" else 0,
                       "encoder": sum(p.numel() for p in encoder.parameters()) if generator is not None else 0},
        trainable_percent_of_lm=round(100.0 * params["total"] / frozen_lm, 3),
    )
    with ArtifactWriter(out) as tmp:
        if generator is not None:
            generator.save(tmp, manifest)
        elif soft is not None:
            soft.save(tmp, manifest)
        else:
            tuned.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_manifest(tmp, {**manifest, "finetuned_hash": weights_hash(tuned)})
        plot_curves(history, tmp / "curves.png", f"{config.mode} on the multitask mixture (dev EM: mean over tasks)")
    return json.loads((out / "manifest.json").read_text())
