"""The training loop shared by the trainers of soft prompts, prompt generators and connectors:
AdamW with linear warmup and decay, dev evaluation with early stopping on the best score, an
atomic checkpoint every ``save_every`` steps, and ``--resume`` from it."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from odqa.errors import OdqaError
from odqa.training.checkpoints import load_checkpoint, save_checkpoint


@dataclass
class LoopResult:
    step: int
    history: dict
    best: dict
    stopped_early: bool
    seconds: float
    trainable: int = 0


def train_loop(work: Path, modules: dict[str, torch.nn.Module], groups: list[dict], n_examples: int,
               batch_loss: Callable[[list[int]], torch.Tensor], evaluate: Callable[[], dict], config, *,
               batch_size: int, max_steps: int | None, epochs: int, metric: str = "em", higher: bool = True,
               resume: bool, progress: bool, desc: str, same_settings: bool = False) -> LoopResult:
    """AdamW over ``groups`` (param groups of ``modules``), ``batch_loss(example indices)``, dev
    ``evaluate()`` every ``config.eval_every`` steps; keeps the best ``metric``; checkpoints in ``work``.
    On return the modules hold the best state. ``same_settings``: a resumed checkpoint must have been
    made with the very same ``config`` (else a longer ``max_steps``, say, may continue a run)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    steps_per_epoch = math.ceil(n_examples / batch_size)
    total = steps_per_epoch * epochs
    if max_steps:
        total = min(total, max_steps)
    optim = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)) * max(0.0, 1 - s / max(1, total)))
    state = load_checkpoint(work) if resume else None
    history: dict = {"loss": [], "dev": []}
    step, best, best_state, bad, before = 0, None, None, 0, 0.0
    if state and same_settings and state["config"] != asdict(config):
        raise OdqaError(f"the checkpoint in '{work}' was made with other settings; rerun with the same "
                        "options, or delete the directory to start over")
    if state:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history, best, bad = state["step"], state["history"], state["best"], state["bad_evals"]
        best_state, before = state["best_state"], state.get("elapsed", 0.0)

    def snapshot() -> dict:
        return {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in modules.items()}

    def better(a: dict, b: dict | None) -> bool:
        if b is None:
            return True
        if a[metric] == b[metric] and "f1" in a:  # EM ties are common on small dev sets: F1 breaks them
            return a["f1"] > b["f1"]
        return a[metric] > b[metric] if higher else a[metric] < b[metric]

    def checkpoint() -> None:
        save_checkpoint(work, {"modules": snapshot(), "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                               "step": step, "history": history, "best": best, "best_state": best_state,
                               "bad_evals": bad, "config": asdict(config),
                               "elapsed": before + time.perf_counter() - t0})

    stopped = False
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=not progress)
    for m in modules.values():
        m.train()
    params = [p for g in groups for p in g["params"]]
    while step < total and not stopped:
        epoch, pos = divmod(step, steps_per_epoch)
        order = list(range(n_examples))
        random.Random(config.seed + epoch).shuffle(order)
        loss = batch_loss(order[pos * batch_size: (pos + 1) * batch_size])
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        step += 1
        history["loss"].append((step, loss.item()))
        if step % config.eval_every == 0 or step == total:
            for m in modules.values():
                m.eval()
            scores = {"step": step, **evaluate()}
            for m in modules.values():
                m.train()
            history["dev"].append(scores)
            if better(scores, best):
                best, best_state, bad = scores, snapshot(), 0
            else:
                bad += 1
                stopped = bad >= config.patience
        last = history["dev"][-1][metric] if history["dev"] else None
        bar.set_postfix(loss=f"{loss.item():.3f}", **{f"dev_{metric}": "-" if last is None else f"{last:.2f}"})
        bar.update(1)
        if step % config.save_every == 0 or step == total or stopped:
            checkpoint()
    bar.close()
    for m in modules.values():
        m.eval()
    if best_state is None:  # no evaluation ran (zero steps): score what there is
        best, best_state = {"step": step, **evaluate()}, snapshot()
    for name, module in modules.items():
        module.load_state_dict(best_state[name])
    trainable = sum(p.numel() for p in params)
    return LoopResult(step, history, best, stopped, before + time.perf_counter() - t0, trainable)
