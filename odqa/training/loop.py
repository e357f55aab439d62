"""The one training loop of odqa, written out top to bottom as nanoGPT writes its own.

Every trainer (the reader's soft prompt, the re-ranker's LoRA adapter, the ID-PT prompt
generator, the recursion prompts and connector) calls :func:`train_loop`:

1. AdamW over the trainer's parameter groups (each group may set its own ``lr`` and
   ``weight_decay``); the backbone is not in them and :class:`~odqa.training.frozen.FrozenCheck`
   proves it did not move;
2. a linear warmup, then a linear decay to zero at the last step;
3. batches in a seeded shuffle per epoch; ``max_steps``, when set, overrides ``epochs``;
4. a dev evaluation every ``eval_every`` steps (once per epoch when unset) and at the end;
   the best score is kept (EM ties broken by F1), and ``patience`` evaluations without a better
   one stop the run;
5. an atomic checkpoint in ``OUT.work/`` every ``save_every`` steps, at the end and on an early
   stop, holding only the trained tensors; ``resume=True`` continues from it, refusing a
   checkpoint made with other ``settings``.

:func:`plot_curves` draws every trainer's ``curves.png`` from the loop's history.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from odqa.errors import ArtifactMismatchError
from odqa.training.checkpoints import load_checkpoint, save_checkpoint


@dataclass
class LoopResult:
    step: int
    history: dict  # {"loss": [(step, loss)], "lr": [(step, lr)], "dev": [{"step", **scores}]}
    best: dict  # the best dev scores, with their step
    stopped_early: bool
    seconds: float  # time in the loop, over every resumed run
    trainable: int = 0


def train_loop(work: Path, modules: dict[str, torch.nn.Module], groups: list[dict], n_examples: int,
               batch_loss: Callable[[list[int], int], torch.Tensor], evaluate: Callable[[], dict], config, *,
               batch_size: int, max_steps: int | None, epochs: int, warmup: float | int | None = None,
               metric: str = "em", higher: bool = True, resume: bool, progress: bool, desc: str,
               settings: dict | None = None) -> LoopResult:
    """Train the parameters in ``groups`` (which belong to ``modules``); on return the modules hold
    the best state.

    :param batch_loss: ``batch_loss(example indices, step)``: the loss of one batch (``step``
        counts from 0, for per-step randomness such as sampled negatives).
    :param evaluate: Dev scores of the current state (a dict holding ``metric``).
    :param config: The trainer's settings: ``eval_every``, ``save_every``, ``patience``, ``seed``
        and, unless ``warmup`` is given, ``warmup_steps``.
    :param warmup: Warmup steps, or a fraction of the run when below 1.
    :param settings: What a resumed checkpoint must have been made with, key by key.
    """
    from tqdm.auto import tqdm

    # --- the plan: steps, schedule, what is trained -------------------------------------------
    t0 = time.perf_counter()
    steps_per_epoch = max(1, math.ceil(n_examples / batch_size))
    total = max_steps if max_steps else steps_per_epoch * epochs
    eval_every = config.eval_every or steps_per_epoch
    warmup = config.warmup_steps if warmup is None else warmup
    warm = max(1, int(warmup * total) if 0 < warmup < 1 else int(warmup))
    optim = torch.optim.AdamW(groups, weight_decay=0.0)  # a group's own weight_decay wins
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / total))
    params = [p for g in groups for p in g["params"]]
    ids = {id(p) for p in params}
    trained = {name: [k for k, p in m.named_parameters() if id(p) in ids] for name, m in modules.items()}

    def snapshot() -> dict:  # the trained tensors only: a frozen base stays out of checkpoints
        return {name: {k: p.detach().clone() for k, p in m.named_parameters() if k in trained[name]}
                for name, m in modules.items()}

    def restore(saved: dict) -> None:
        for name, m in modules.items():
            if set(saved.get(name, {})) != set(trained[name]):
                raise ArtifactMismatchError(f"the checkpoint in '{work}' holds other trainable tensors than this "
                                            "model; drop --resume, or delete the directory, to start over")
            m.load_state_dict(saved[name], strict=False)

    def better(a: dict, b: dict | None) -> bool:
        if b is None:
            return True
        if a[metric] == b[metric] and "f1" in a:  # EM ties are common on small dev sets: F1 breaks them
            return a["f1"] > b["f1"]
        return a[metric] > b[metric] if higher else a[metric] < b[metric]

    # --- resume -------------------------------------------------------------------------------
    history: dict = {"loss": [], "lr": [], "dev": []}
    step, best, best_state, bad, before = 0, None, None, 0, 0.0
    state = load_checkpoint(work) if resume else None
    if state and "trained" not in state:
        raise ArtifactMismatchError(f"the checkpoint in '{work}' was written by an older odqa; delete the "
                                    "directory to start over")
    if state:
        for key, value in (settings or {}).items():
            if state["settings"].get(key) != value:
                raise ArtifactMismatchError(
                    f"the checkpoint in '{work}' was made with other settings ({key}={state['settings'].get(key)!r}, "
                    f"but this run has {value!r}); resume with the same settings, or drop --resume and delete the "
                    "directory to start over")
        restore(state["trained"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history, best, bad = state["step"], state["history"], state["best"], state["bad_evals"]
        best_state, before = state["best_state"], state["elapsed"]

    def checkpoint() -> None:
        save_checkpoint(work, {"trained": snapshot(), "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                               "step": step, "history": history, "best": best, "best_state": best_state,
                               "bad_evals": bad, "settings": settings or {},
                               "elapsed": before + time.perf_counter() - t0})

    # --- the loop -----------------------------------------------------------------------------
    stopped = False
    bar = tqdm(total=total, initial=min(step, total), desc=desc, unit="step", disable=not progress)
    for m in modules.values():
        m.train()
    while step < total and not stopped:
        epoch, pos = divmod(step, steps_per_epoch)
        order = list(range(n_examples))
        random.Random(config.seed + epoch).shuffle(order)
        loss = batch_loss(order[pos * batch_size: (pos + 1) * batch_size], step)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        step += 1
        history["loss"].append((step, loss.item()))
        history["lr"].append((step, sched.get_last_lr()[0]))
        if step % eval_every == 0 or step == total:
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
        bar.set_postfix(loss=f"{loss.item():.3f}", **{f"dev_{metric}": "-" if last is None else f"{last:.3f}"})
        bar.update(1)
        if step % config.save_every == 0 or step == total or stopped:
            checkpoint()
    bar.close()

    # --- the best state -----------------------------------------------------------------------
    for m in modules.values():
        m.eval()
    if best_state is None:  # no evaluation ran (zero steps): score what there is
        best, best_state = {"step": step, **evaluate()}, snapshot()
    restore(best_state)
    return LoopResult(step, history, best, stopped, before + time.perf_counter() - t0, sum(p.numel() for p in params))


def plot_curves(history: dict, path: Path, title: str, metric: str = "em", dev_label: str = "dev EM",
                baseline: float | None = None, baseline_label: str = "") -> None:
    """``curves.png``: the train loss (left axis, raw and smoothed) and the dev ``metric`` (right
    axis, ``dev_label``) against the step; ``baseline`` draws a dashed reference line on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    if history["loss"]:
        steps, losses = zip(*history["loss"])
        ax1.plot(steps, losses, color="tab:blue", alpha=0.35, label="train loss (batch)")
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax1.plot(steps, smooth, color="tab:blue", label=f"train loss (mean of {k})")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    if history["dev"]:
        ax2.plot([d["step"] for d in history["dev"]], [d[metric] for d in history["dev"]], "o-", color="tab:red",
                 label=dev_label)
    if baseline is not None:
        ax2.axhline(baseline, color="gray", ls="--", label=baseline_label)
    ax2.set_ylabel(dev_label)
    fig.legend(loc="upper right")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
