"""Training for recursive closed-book QA (paper, Section 4): the one-pass prompt, then a second pass.

Three modes, each one written-out loop (AdamW, linear warm-up and decay, dev EM every N
steps with early stopping keeping the best, atomic checkpoints and ``--resume``), each
inside :class:`~odqa.training.frozen.FrozenCheck`:

- ``one-pass``: a soft prompt for the closed-book reader (``"Question: ...\\nAnswer:"``, no
  documents); loss on the answer tokens (:func:`odqa.training.reader.batch_loss`).
Pass 2's soft prompt starts from pass 1's (when their lengths match), so pass 2 begins as the
one-pass reader and learns what the second reading adds.

- ``textual``: pass 1 (a trained one-pass prompt, ``--first-prompt``) samples candidates for
  every train and dev question once (cached in ``<out>.work/candidates-*.jsonl``, resumable);
  pass 2's own soft prompt learns to answer from ``"Candidate: ...`` lines + the question.
- ``neural``: pass 1's greedy answers are cached the same way; its final hidden states feed a
  :class:`~odqa.components.recursion.Connector`, and the connector plus pass 2's soft prompt are
  trained on the task. Before that the connector is pre-trained on language modelling over the
  bundled corpus (:func:`pretrain_connector`) unless ``pretrain=False`` (the ablation).

Artifacts: ``one-pass`` and ``textual`` write a soft prompt dir; ``neural`` writes one dir with
``connector.safetensors`` and ``soft_prompt.safetensors`` (pass 2) whose manifest names the
pass-1 prompt (path and sha256); the pre-trained connector is an artifact of its own, reusable.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from odqa.configs import RECURSIVE_MODES as MODES
from odqa.configs import RecursiveTrainConfig
from odqa.errors import OdqaError, TrainingDataError
from odqa.metrics import exact_match, qa_scores
from odqa.runs import RunWriter, atomic_write_bytes, file_sha256, read_records
from odqa.artifacts import ArtifactWriter, make_manifest, read_manifest, write_manifest
from odqa.training.checkpoints import CHECKPOINT, work_dir
from odqa.training.frozen import FrozenCheck
from odqa.training.loop import plot_curves, train_loop

# --- data ----------------------------------------------------------------------------------------
def _target_ids(tok, answer: str, newline_id: int | None) -> list[int]:
    ids = tok(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    return ids + ([newline_id] if newline_id is not None else [])


def cache_records(items: list[dict], path: Path, make: Callable[[dict], dict], desc: str, progress: bool) -> list[dict]:
    """One record per item, computed once and appended durably to ``path`` (a rerun resumes)."""
    from tqdm.auto import tqdm

    done = {str(r["id"]): r for r in read_records(path)}
    todo = [it for it in items if str(it["id"]) not in done]
    with RunWriter(path) as writer:
        for it in tqdm(todo, desc=desc, unit="q", disable=not (progress and todo)):
            rec = {"id": it["id"], "question": it["question"], "answers": it["answers"], **make(it)}
            writer.write(rec)
            done[str(it["id"])] = rec
    return [done[str(it["id"])] for it in items]


PASS1_KEY = "pass1.json"


def check_pass1_caches(work: Path, key: dict) -> None:
    """Keep ``work``'s cached pass-1 outputs only if they were made by the same pass 1 (``key``).

    The caches (``candidates-*.jsonl``, ``first-pass-*.jsonl``) are keyed by question id alone, so a
    re-trained pass-1 prompt, another backbone or other sampling settings would otherwise be read
    back silently. Stale caches are deleted and made again; a checkpoint trained on them cannot be
    resumed with another pass 1, so that is an error.
    """
    path = work / PASS1_KEY
    caches = sorted([*work.glob("candidates-*.jsonl"), *work.glob("first-pass-*.jsonl")])
    old = json.loads(path.read_text()) if path.exists() else None
    if old != key:
        if old is not None and (work / CHECKPOINT).exists():
            changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            raise OdqaError(f"'{work}' holds a checkpoint trained with another pass 1 (changed: {', '.join(changed)}); "
                            "it cannot be resumed with this one: delete the directory to start over")
        for f in caches:
            f.unlink()
        atomic_write_bytes(path, json.dumps(key, indent=2).encode())


def embeds_loss(model, soft, items: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean cross-entropy where ``labels != -100``; each item is ``(embeds [n, d], labels [n])`` with
    ``labels[i]`` the token *at* position i (predicted from position i-1); ``soft`` (or ``None``) is
    prepended; right padding; the LM head runs only on predicted positions."""
    width = max(int(e.shape[0]) for e, _ in items)
    d = int(items[0][0].shape[1])
    device = model.get_input_embeddings().weight.device
    mask = torch.zeros(len(items), width, dtype=torch.long, device=device)
    labels = torch.full((len(items), width), -100, dtype=torch.long, device=device)
    rows = []
    for i, (e, lab) in enumerate(items):
        n, e = int(e.shape[0]), e.to(device)
        rows.append(torch.cat([e, e.new_zeros(width - n, d)]) if n < width else e)
        mask[i, :n] = 1
        labels[i, :n] = lab.to(device)
    embeds = torch.stack(rows)
    if soft is not None:
        embeds = soft(embeds)
        p = soft.length
        mask = torch.cat([mask.new_ones(len(items), p), mask], dim=1)
        labels = torch.cat([labels.new_full((len(items), p), -100), labels], dim=1)
    from odqa.training.reader import answer_loss

    return answer_loss(model, embeds, mask, labels)


def _scores(preds: list[str], items: list[dict]) -> dict:
    return qa_scores(preds, [it["answers"] for it in items])


# --- language-model pre-training of the connector ------------------------------------------------
def corpus_chunks(tok, corpus: str, chunk: int, seed: int, limit: int) -> list[list[int]]:
    """Up to ``limit`` token windows of ``2 * chunk``, one from the start of each passage long enough,
    passages in a seeded random order (only as many are tokenized as needed)."""
    from odqa.data.corpus import read_corpus

    passages = read_corpus(corpus)
    random.Random(seed).shuffle(passages)
    out = []
    for p in passages:
        ids = tok(p.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2 * chunk:
            out.append(ids[: 2 * chunk])
            if len(out) >= limit:
                break
    return out


def pretrain_connector(backbone, model_name: str, out: Path, config: RecursiveTrainConfig, corpus: str = "wiki-vital",
                       resume: bool = False, progress: bool = True) -> dict:
    """Pre-train a :class:`Connector` on language modelling, through the frozen LM twice.

    Each example is a window of the corpus split in two halves, ``x`` and ``y``
    (``chunk_tokens`` each). Pass 1 reads ``x`` (plain text, no soft prompt) and the connector maps
    its final hidden states; pass 2 reads ``[connector(h(x)) ; y]`` and must predict ``y`` token by
    token, its first token from the connector's vectors alone. Pass 2 never sees ``x``'s tokens,
    so the loss only falls below the no-context loss if the connector carries ``x``'s content
    into vectors the LM's input layer can read: what neural recursion needs (paper, Section 4:
    this pre-training was vital). Dev: the loss on ``y[1:]`` of held-out windows with the
    connector, against reading ``y`` alone (no context) and reading ``x ; y`` as text.

    Writes the connector artifact to ``out`` (reusable by any later task training).
    """
    from odqa.lm.connector import Connector

    model, tok = backbone.model, backbone.tokenizer
    work = work_dir(out, resume, "pre-training")
    work.mkdir(parents=True, exist_ok=True)
    c = config.chunk_tokens
    chunks = corpus_chunks(tok, corpus, c, config.seed,
                           config.pretrain_dev_chunks + config.pretrain_steps * config.pretrain_batch_size)
    dev, train = chunks[: config.pretrain_dev_chunks], chunks[config.pretrain_dev_chunks:]
    if not train:
        raise TrainingDataError(f"corpus '{corpus}' has no passage of {2 * c} tokens to pre-train the connector on")
    torch.manual_seed(config.seed)
    connector = Connector.for_backbone(model, tok, config.bottleneck)

    def item(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from odqa.lm.connector import embed_ids

        with torch.no_grad():
            h = model.get_decoder()(inputs_embeds=embed_ids(model, ids[:c]).unsqueeze(0)).last_hidden_state[0]
        e = torch.cat([connector(h), embed_ids(model, ids[c:])])
        return e, torch.tensor([-100] * c + ids[c:])

    def batch_loss(idx: list[int], step: int) -> torch.Tensor:
        return embeds_loss(model, None, [item(train[i]) for i in idx])

    @torch.no_grad()
    def dev_losses() -> dict:
        from odqa.lm.connector import embed_ids

        def tail_loss(e: torch.Tensor, y: list[int]) -> float:  # loss on y[1:], y at the end of e
            lab = torch.full((e.shape[0],), -100, dtype=torch.long)
            lab[e.shape[0] - len(y) + 1:] = torch.tensor(y[1:])
            return float(embeds_loss(model, None, [(e, lab)]))

        conn, none, text = [], [], []
        for ids in dev:
            x, y = ids[:c], ids[c:]
            h = model.get_decoder()(inputs_embeds=embed_ids(model, x).unsqueeze(0)).last_hidden_state[0]
            conn.append(tail_loss(torch.cat([connector(h), embed_ids(model, y)]), y))
            none.append(tail_loss(embed_ids(model, y), y))
            text.append(tail_loss(embed_ids(model, ids), y))
        mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
        return {"loss": mean(conn), "loss_no_context": mean(none), "loss_text_context": mean(text)}

    groups = [{"params": list(connector.parameters()), "lr": config.pretrain_lr}]
    with FrozenCheck(model, model_name) as frozen:
        result = train_loop(work, {"connector": connector}, groups, len(train), batch_loss, dev_losses, config,
                            batch_size=config.pretrain_batch_size, max_steps=config.pretrain_steps, epochs=1,
                            metric="loss", higher=False, resume=resume, progress=progress,
                            desc="connector LM pre-training")
    manifest = make_manifest(
        "connector", backbone=model_name, backbone_hash=frozen.digest,
        data={"train": f"real: corpus {corpus} (language modelling)", "synthetic": False,
              "windows": len(train), "dev_windows": len(dev), "chunk_tokens": c},
        dev_metrics={"best": result.best, "curve": result.history["dev"]},
        hidden_size=connector.hidden_size, bottleneck=connector.bottleneck, trainable_params=result.trainable,
        config=asdict(config), steps=result.step, train_seconds=round(result.seconds, 1),
    )
    with ArtifactWriter(out) as tmp:
        connector.save(tmp)
        write_manifest(tmp, manifest)
        _plot(result.history, tmp / "curves.png", "connector LM pre-training", "loss")
    return manifest


def _plot(history: dict, path: Path, title: str, metric: str) -> None:
    plot_curves(history, path, title, metric=metric, dev_label="held-out loss" if metric == "loss" else "dev EM")


# --- the task training ---------------------------------------------------------------------------
def train_recursive(mode: str, model_name: str, train_items: list[dict], dev_items: list[dict], out: str | Path,
                    config: RecursiveTrainConfig, train_source: dict, first_prompt: str | None = None,
                    connector_dir: str | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train one mode (see the module docstring); returns the artifact's manifest.

    :param first_prompt: Pass 1's soft prompt artifact (``textual`` and ``neural``).
    :param connector_dir: ``neural`` with pre-training: the pre-trained connector artifact; reused
        when it exists, else pre-trained and written there.
    """
    from odqa.components import recursion as rec
    from odqa.lm import connector as lmc
    from odqa.lm.generation import strip_stops
    from odqa.lm.backbone import load_backbone
    from odqa.lm.soft_prompt import SoftPrompt, weights_path
    from odqa.training.reader import batch_loss as prompt_loss
    from odqa.training.reader import init_prompt
    from odqa.training.reader import newline_id as stop_token

    if mode not in MODES:
        raise OdqaError(f"unknown mode '{mode}'; use one of {list(MODES)}")
    if mode != "one-pass" and not first_prompt:
        raise OdqaError(f"--mode {mode} needs --first-prompt DIR, the one-pass closed-book prompt "
                        "(train it with --mode one-pass)")
    if not train_items:
        raise TrainingDataError("no training questions; pass a --train set with at least one question")
    rec.check_sampling(config.num_candidates, config.temperature, config.top_p)
    out = Path(out)
    work = work_dir(out, resume)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    train_items = rng.sample(train_items, min(config.max_examples, len(train_items)))
    if config.dev_limit and config.dev_limit < len(dev_items):
        # a seeded sample, not the first N: FanOutQA's sub-questions come in clusters (40 "batting hand
        # of X" in a row), so a prefix of the dev split is one or two question types
        dev_items = random.Random(config.seed + 1).sample(dev_items, config.dev_limit)

    backbone = load_backbone(model_name)
    model, tok = backbone.model, backbone.tokenizer
    newline_id = stop_token(tok)
    soft1 = None
    if first_prompt:
        soft1 = backbone.soft_prompt(first_prompt)
    extra: dict = {}
    pretrained: dict | None = None
    if first_prompt:
        key = {"mode": mode, "backbone": model_name, "first_prompt_sha256": file_sha256(weights_path(first_prompt)),
               "max_new_tokens": config.max_new_tokens}
        if mode == "textual":
            key.update(num_candidates=config.num_candidates, temperature=config.temperature, top_p=config.top_p,
                       seed=config.seed)
        check_pass1_caches(work, key)
    with FrozenCheck(model, model_name) as frozen:
        t0 = time.perf_counter()
        if soft1 is not None and soft1.length == config.prompt_length:
            # pass 2 starts as the one-pass reader (a warm start): it already answers in the right
            # format and only has to learn to use the candidates / connector vectors. From the
            # instruction's tokens instead, pass 2 was still at dev EM 0 after 15 steps.
            soft = SoftPrompt(soft1.prompt.detach().clone())
        else:
            soft = init_prompt(backbone, config.prompt_length)  # pass 2's (or the one pass's) prompt
        modules: dict[str, torch.nn.Module] = {"prompt": soft}
        groups = [{"params": [soft.prompt], "lr": config.lr}]

        if mode in ("one-pass", "textual"):
            if mode == "textual":
                def sample(it: dict) -> dict:
                    cands, _ = rec.sample_candidates(backbone, soft1, it["question"], config.num_candidates,
                                                     config.temperature, config.top_p, config.seed,
                                                     config.max_new_tokens, 10**6)
                    return {"candidates": cands}

                train_recs = cache_records(train_items, work / "candidates-train.jsonl", sample,
                                           "pass 1: sampling train candidates", progress)
                dev_recs = cache_records(dev_items, work / "candidates-dev.jsonl", sample,
                                         "pass 1: sampling dev candidates", progress)
                hit = lambda rs: round(100.0 * sum(any(exact_match(c, r["answers"]) for c in r["candidates"])  # noqa: E731
                                                   for r in rs) / max(len(rs), 1), 1)
                extra["candidates"] = {"train_answer_in_candidates": hit(train_recs),
                                       "dev_answer_in_candidates": hit(dev_recs),
                                       "mean_candidates": round(sum(len(r["candidates"]) for r in train_recs)
                                                                / max(len(train_recs), 1), 2)}
            else:
                train_recs = [{**it, "candidates": []} for it in train_items]
                dev_recs = [{**it, "candidates": []} for it in dev_items]
            examples = []
            for r in train_recs:
                prefix, body = rec.closed_book_parts(tok, r["question"], r["candidates"])
                prompt = prefix + body
                examples.append((prompt + _target_ids(tok, r["answers"][0], newline_id), len(prompt)))

            def batch_loss(idx: list[int], step: int) -> torch.Tensor:
                return prompt_loss(model, soft, [examples[i] for i in idx], tok.pad_token_id)

            def evaluate() -> dict:
                preds = []
                with torch.no_grad():
                    for r in dev_recs:
                        prefix, body = rec.closed_book_parts(tok, r["question"], r["candidates"])
                        embeds = soft(lmc.embed_ids(model, prefix + body).unsqueeze(0))
                        preds.append(rec.clean_answer(rec.greedy_from_embeds(backbone, embeds, config.max_new_tokens)[0]))
                return _scores(preds, dev_recs)
        else:  # neural
            def first(it: dict) -> dict:
                prefix, body = rec.closed_book_parts(tok, it["question"])
                embeds = soft1(lmc.embed_ids(model, prefix + body).unsqueeze(0))
                new, _ = rec.greedy_generate(model, None, embeds, config.max_new_tokens, backbone.stop_token_ids)
                answer_ids = strip_stops(new, backbone.stop_token_ids, tok.pad_token_id)
                return {"first_answer_ids": answer_ids, "first_answer": tok.decode(answer_ids, skip_special_tokens=True)}

            train_recs = cache_records(train_items, work / "first-pass-train.jsonl", first,
                                       "pass 1: greedy train answers", progress)
            dev_recs = cache_records(dev_items, work / "first-pass-dev.jsonl", first,
                                     "pass 1: greedy dev answers", progress)
            extra["first_pass"] = {"train_em": _scores([r["first_answer"] for r in train_recs], train_recs)["em"],
                                   "dev_em": _scores([r["first_answer"] for r in dev_recs], dev_recs)["em"]}

            def states(r: dict) -> tuple[list[int], list[int], torch.Tensor]:
                prefix, body = rec.closed_book_parts(tok, r["question"])
                return prefix, body, lmc.first_pass_states(model, soft1, prefix, body, r["first_answer_ids"])

            train_states = [states(r) for r in train_recs]  # pass 1 is frozen: computed once
            dev_states = [states(r) for r in dev_recs]
            if config.pretrain:
                connector_path = Path(connector_dir) if connector_dir else out.parent / f"connector-lm-{_slug(model_name)}"
                if not (connector_path / lmc.CONNECTOR).exists():
                    pretrain_connector(backbone, model_name, connector_path, config, corpus=config.pretrain_corpus,
                                       resume=resume, progress=progress)
                connector = lmc.Connector.load(connector_path, model_name, backbone.hidden_size).to(backbone.device)
                pretrained = {"path": str(connector_path), "sha256": file_sha256(connector_path / lmc.CONNECTOR),
                              "dev_metrics": read_manifest(connector_path).get("dev_metrics", {}).get("best")}
            else:
                connector = lmc.Connector.for_backbone(model, tok, config.bottleneck)
            modules["connector"] = connector
            groups.append({"params": list(connector.parameters()), "lr": config.connector_lr})
            examples = []
            for r, (prefix, body, h) in zip(train_recs, train_states):
                examples.append((prefix, body, h, _target_ids(tok, r["answers"][0], newline_id)))

            def batch_loss(idx: list[int], step: int) -> torch.Tensor:
                items = []
                for i in idx:
                    prefix, body, h, target = examples[i]
                    e = torch.cat([lmc.embed_ids(model, prefix), lmc.second_pass_inputs(model, connector, h, body),
                                   lmc.embed_ids(model, target)])
                    lab = torch.full((e.shape[0],), -100, dtype=torch.long)
                    lab[e.shape[0] - len(target):] = torch.tensor(target)
                    items.append((e, lab))
                return embeds_loss(model, soft, items)

            def evaluate() -> dict:
                preds = []
                with torch.no_grad():
                    for prefix, body, h in dev_states:
                        e = torch.cat([lmc.embed_ids(model, prefix), lmc.second_pass_inputs(model, connector, h, body)])
                        text = rec.greedy_from_embeds(backbone, soft(e.unsqueeze(0)), config.max_new_tokens)[0]
                        preds.append(rec.clean_answer(text))
                return _scores(preds, dev_recs)

        prep_seconds = time.perf_counter() - t0
        result = train_loop(work, modules, groups, len(examples), batch_loss, evaluate, config,
                            batch_size=config.batch_size, max_steps=config.max_steps, epochs=config.epochs,
                            resume=resume, progress=progress, desc=f"{mode} training")

    kind = {"one-pass": "soft_prompt", "textual": "soft_prompt", "neural": "neural_recursion"}[mode]
    manifest = make_manifest(
        kind, backbone=model_name, backbone_hash=frozen.digest,
        data={**train_source, "examples": len(examples), "dev": f"{len(dev_items)} questions"},
        dev_metrics={"best": result.best, "curve": result.history["dev"]},
        role={"one-pass": "closed-book reader", "textual": "textual recursion, pass 2",
              "neural": "neural recursion: connector + pass-2 prompt"}[mode],
        template=rec.TEMPLATE, max_new_tokens=config.max_new_tokens, config=asdict(config), steps=result.step,
        stopped_early=result.stopped_early, trainable_params=result.trainable,
        train_seconds=round(result.seconds + prep_seconds, 1), prep_seconds=round(prep_seconds, 1), **extra,
    )
    if first_prompt:
        manifest["first_prompt"] = str(first_prompt)
        manifest["first_prompt_sha256"] = file_sha256(weights_path(first_prompt))
    if mode == "neural":
        manifest["pretrained_connector"] = pretrained  # None: the no-pretraining ablation
        manifest["hidden_size"] = backbone.hidden_size
        manifest["bottleneck"] = modules["connector"].bottleneck
    with ArtifactWriter(out) as tmp:
        soft.save(tmp, manifest)  # writes soft_prompt.safetensors and the manifest (length, hidden size added)
        if mode == "neural":
            modules["connector"].save(tmp)
        _plot(result.history, tmp / "curves.png", f"{mode}: {model_name}, real closed-book questions", "em")
    return json.loads((out / "manifest.json").read_text())


def _slug(model_name: str) -> str:
    name = Path(model_name).name if ("/" in model_name or Path(model_name).exists()) else model_name
    return name.split("-instruct")[0].replace("/", "-") or "lm"
