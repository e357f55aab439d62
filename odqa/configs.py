"""Settings of odqa's commands: plain dataclasses with their defaults, importable without torch.

Each trainer setting is declared once, here, with its help text beside it
(:func:`setting`); the CLI makes every ``odqa train ...`` flag from these fields
(:meth:`TrainConfig.add_flags`, with the loop's settings in one shared group) and builds the
config back from the parsed flags (:meth:`TrainConfig.from_args`). ``--quick`` is
:meth:`TrainConfig.quick`. Nothing here imports torch, so ``odqa --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import ClassVar

from odqa.errors import PipelineConfigError


# --- retrieval -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BM25Config:
    """BM25 scoring and tokenization, chosen on the dev split (bench/results/bm25_params*.md).

    Lucene scoring with a high k1 and low b (little length normalisation), an English
    stemmer and no stopword list: evidence page in top-20 90.5% on dev vs 84.5% for
    the textbook k1=1.2, b=0.75 with stopwords.
    """

    method: str = "lucene"
    k1: float = 3.0
    b: float = 0.3
    stemmer: str | None = "english"
    stopwords: str | None = None

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        stem = None
        if self.stemmer:
            import Stemmer

            stem = Stemmer.Stemmer(self.stemmer).stemWords
        return bm25s.tokenize(
            texts, stopwords=self.stopwords, stemmer=stem, return_ids=False, show_progress=False
        )


# --- trainer settings ---------------------------------------------------------------------------
def setting(default, help: str, *, flag: bool = True, choices: tuple | None = None):
    """A config field with its help text (and, when given, its allowed values) beside it.

    :param flag: ``False`` keeps the field off the command line (set in Python only).
    """
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# the training loop's own settings (odqa.training.loop.train_loop), in one flag group for every
# trainer; each trainer picks its defaults, the meaning is written once here
LOOP_HELP = {
    "epochs": "passes over the training examples",
    "max_steps": "stop after N steps (overrides --epochs)",
    "batch_size": "examples per step",
    "warmup_steps": "steps of linear warmup",
    "eval_every": "steps between dev evaluations",
    "save_every": "steps between checkpoints",
    "patience": "dev evaluations without a better score before stopping",
}
LOOP_SETTINGS = (*LOOP_HELP, "batch_questions", "lr", "warmup", "weight_decay", "seed")


def loop_setting(name: str, default, note: str = ""):
    """A setting of the training loop: its help text is :data:`LOOP_HELP`'s, plus ``note``."""
    return setting(default, LOOP_HELP[name] + (f" ({note})" if note else ""))
_TYPES = {"int": int, "float": float, "str": str}


class TrainConfig:
    """What every trainer's settings share: flags made from the fields, and ``--quick``."""

    QUICK: ClassVar[dict] = {}  # the smoke run's settings (`odqa train ... --quick`, used by the slow tests)

    def quick(self):
        """These settings as a smoke run: a few steps on a few questions."""
        return replace(self, **self.QUICK)

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field (``max_steps`` -> ``--max-steps``), the loop's in their own group."""
        loop = parser.add_argument_group("training loop")
        for f in fields(cls):
            if not f.metadata.get("flag", False):
                continue
            default = f.default if f.default is not MISSING else f.default_factory()
            kind = str(f.type).replace(" ", "")
            kwargs: dict = {"default": default, "help": f.metadata["help"], "dest": f.name}
            if kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif kind.startswith("list["):
                kwargs.update(nargs="+", type=_TYPES[kind[5:-1]])
            else:
                kwargs["type"] = _TYPES[kind.split("|")[0]]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if default is not None and kind != "bool":
                kwargs["help"] += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
            (loop if f.name in LOOP_SETTINGS else parser).add_argument(f"--{f.name.replace('_', '-')}", **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The config the parsed flags describe (fields without a flag keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


# --- odqa train reader ---------------------------------------------------------------------------
@dataclass
class ReaderTrainConfig(TrainConfig):
    """Settings of one prompt-tuning run (recorded in the checkpoint and the manifest)."""

    QUICK: ClassVar[dict] = {"max_examples": 4, "max_steps": 2, "eval_every": 2, "batch_size": 2, "dev_limit": 3}

    prompt_length: int = setting(100, "soft prompt vectors (Lester et al.'s default)")
    template: str = setting("qa", "the tuned reader's template: bare 'qa', the soft prompt replaces the "
                                  "instruction and examples")
    max_examples: int = setting(1000, "a seeded random subset of the train file (contexts cost a pipeline run each)")
    epochs: int = loop_setting("epochs", 1)
    max_steps: int | None = loop_setting("max_steps", None)
    batch_size: int = loop_setting("batch_size", 8)
    lr: float = setting(0.03, "AdamW learning rate of the prompt (its scale is the embedding table's)")
    warmup_steps: int = loop_setting("warmup_steps", 10)
    eval_every: int = loop_setting("eval_every", 40)
    save_every: int = loop_setting("save_every", 10)
    patience: int = loop_setting("patience", 3, "by dev EM")
    dev_limit: int | None = setting(None, "use only the first N dev questions")
    seed: int = setting(0, "seed of the subset, the shuffles and the initial prompt")


# --- odqa train reranker -------------------------------------------------------------------------
@dataclass
class RerankerTrainConfig(TrainConfig):
    """Settings of one re-ranker training run (recorded in the checkpoint and the manifest)."""

    QUICK: ClassVar[dict] = {"max_steps": 3, "max_examples": 12, "dev_limit": 6, "dev_candidates": 30, "negatives": 3,
                             "max_length": 128}

    student: str = setting("cross-encoder", "'cross-encoder': a LoRA adapter and head reading (question, passage) "
                                            "pairs; 'query-encoder': a LoRA adapter on the dense index's question "
                                            "encoder, scored against the index's own passage vectors (Atlas "
                                            "query-side fine-tuning; --base is then the index's encoder)",
                           choices=("cross-encoder", "query-encoder"))
    base: str = setting("minilm-l6", "encoder or cross-encoder to adapt (name, path or HF id)")
    labels: str = setting("answer", "with a question set as --train: 'answer' takes candidates holding an accepted "
                                    "answer as positives (DPR's distant supervision); 'reader' distils the frozen "
                                    "reader's log p(answer | question, passage) (Atlas, REPLUG)",
                          choices=("answer", "reader"))
    train_candidates: int = setting(10, "with a question set as --train: each question's first N retrieved "
                                        "candidates are its training group")
    temperature: float = setting(1.0, "--labels reader: softmax temperature of the teacher's scores")
    epochs: int = loop_setting("epochs", 1)
    max_steps: int | None = loop_setting("max_steps", None)
    batch_questions: int = setting(4, "questions per step")
    negatives: int = setting(7, "hard negatives per question (sampled when there are more)")
    lr: float = setting(3e-4, "AdamW learning rate of the adapter and head")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    warmup: float = setting(0.1, "linear warmup, as a fraction of the steps")
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int | None = setting(None, "LoRA alpha (default: 2 x --lora-r)")
    lora_dropout: float = setting(0.1, "LoRA dropout")
    lora_targets: list[str] = setting(["query", "key", "value", "dense"], "modules that get LoRA matrices")
    max_length: int = setting(256, "token limit of one (question, passage) pair")
    micro_batch: int = setting(16, "pairs per forward pass, grouped by length (the step's loss is over all)")
    max_examples: int | None = setting(None, "train on a seeded random subset of N examples")
    eval_every: int | None = loop_setting("eval_every", None, "default: once per epoch")
    save_every: int = loop_setting("save_every", 25)
    patience: int = loop_setting("patience", 2, "by dev MRR")
    dev_limit: int | None = setting(None, "use only the first N dev questions")
    dev_candidates: int | None = setting(None, "re-rank only the first N candidates (default: all the retrieval "
                                               "stages return)")
    eval_batch_size: int = setting(64, "pairs per forward pass when scoring dev candidates")
    seed: int = setting(0, "seed of the subset, the shuffles and the sampled negatives")

    def __post_init__(self):
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r


# --- odqa train recursive ------------------------------------------------------------------------
RECURSIVE_MODES = ("one-pass", "textual", "neural")


@dataclass
class RecursiveTrainConfig(TrainConfig):
    """Settings of one run (recorded in the checkpoint and the manifest)."""

    QUICK: ClassVar[dict] = {"max_examples": 4, "max_steps": 2, "eval_every": 2, "batch_size": 2, "dev_limit": 3,
                             "pretrain_steps": 2, "pretrain_dev_chunks": 2, "num_candidates": 2,
                             "max_new_tokens": 8}

    prompt_length: int = setting(20, "soft prompt vectors (short: ~20-token inputs and a few hundred examples)")
    max_examples: int = setting(2000, "a seeded random subset of the training questions")
    epochs: int = loop_setting("epochs", 3)
    max_steps: int | None = loop_setting("max_steps", None)
    batch_size: int = loop_setting("batch_size", 8)
    lr: float = setting(0.03, "AdamW learning rate of the soft prompt")
    connector_lr: float = setting(1e-3, "neural: AdamW learning rate of the connector")
    warmup_steps: int = loop_setting("warmup_steps", 10)
    eval_every: int = loop_setting("eval_every", 30)
    save_every: int = loop_setting("save_every", 10)
    patience: int = loop_setting("patience", 3, "by dev EM")
    dev_limit: int | None = setting(150, "first N dev questions (0: all)")
    seed: int = setting(0, "seed of the subset, the shuffles and the sampling")
    max_new_tokens: int = setting(16, "longest answer, in tokens")
    # textual recursion: pass-1 sampling
    num_candidates: int = setting(4, "textual: samples in pass 1")
    temperature: float = setting(0.7, "textual: pass-1 sampling temperature")
    top_p: float = setting(0.9, "textual: pass-1 nucleus sampling mass")
    # neural recursion: the connector and its language-model pre-training
    bottleneck: int = setting(128, "neural: the connector MLP's width")
    pretrain: bool = setting(True, "neural: pre-train the connector on language modelling first (--no-pretrain: "
                                   "the ablation)")
    pretrain_steps: int = setting(200, "neural: steps of the connector's LM pre-training")
    pretrain_batch_size: int = setting(8, "neural: windows per pre-training step")
    pretrain_lr: float = setting(1e-3, "neural: AdamW learning rate of the pre-training")
    chunk_tokens: int = setting(32, "neural: tokens of each pre-training window's context and continuation")
    pretrain_dev_chunks: int = setting(48, "neural: held-out windows for the pre-training's loss")
    pretrain_corpus: str = setting("wiki-vital", "neural: the corpus the pre-training reads")


# --- odqa train idpt -----------------------------------------------------------------------------
IDPT_MODES = ("idpt", "prompt", "finetune")
# idpt: the cross-attention network's rate; 1e-4 beat 1e-3 on the mixture's dev split (eval/RESULTS.md)
DEFAULT_LR = {"idpt": 1e-4, "prompt": 0.03, "finetune": 3e-5}


@dataclass
class IDPTTrainConfig(TrainConfig):
    """Settings of one run (recorded in the checkpoint and the manifest)."""

    QUICK: ClassVar[dict] = {"max_steps": 2, "eval_every": 2, "batch_size": 2, "dev_per_task": 1}

    mode: str = setting("idpt", "idpt: train only the prompt generator; prompt: one shared soft prompt; finetune: "
                                "a copy of the backbone (saved outside the repo)", choices=IDPT_MODES)
    prompt_length: int = setting(20, "P: vectors of p(x), and of the plain shared prompt")
    encoder: str = setting("minilm-l6", "idpt: the frozen encoder (a T5 id uses T5EncoderModel)")
    encoder_prompt_length: int = setting(8, "Q: learned vectors prepended to the encoder's input")
    attn_dim: int = setting(128, "idpt: width of the cross-attention network")
    heads: int = setting(4, "idpt: attention heads")
    max_steps: int = loop_setting("max_steps", 80, "the step budget, the same for every mode")
    batch_size: int = loop_setting("batch_size", 8)
    lr: float | None = setting(None, "idpt: the cross-attention network's rate (default 1e-4); prompt: the prompt's "
                                     "(0.03); finetune: all weights (3e-5)")
    prompt_lr: float = setting(0.03, "prompt vectors (the plain prompt; idpt's encoder prompt and output bias)")
    warmup_steps: int = loop_setting("warmup_steps", 10)
    eval_every: int = loop_setting("eval_every", 40)
    save_every: int = loop_setting("save_every", 10)
    patience: int = loop_setting("patience", 3)
    dev_per_task: int = setting(8, "dev examples per task")
    max_input_tokens: int = setting(128, "longest input read; longer inputs keep their head and tail")
    max_new_tokens: int = setting(12, "longest answer, in tokens")
    seed: int = setting(0, "seed of the shuffles and the initial prompt")

    def __post_init__(self):
        if self.mode not in IDPT_MODES:
            raise PipelineConfigError(f"unknown mode '{self.mode}'; use one of {list(IDPT_MODES)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mode]
