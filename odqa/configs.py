"""Settings of odqa's commands: plain dataclasses with their defaults, importable without torch.

The CLI builds its parser from these defaults, so ``odqa --help`` does not load torch or the
trainers; each trainer module re-exports its own config under the old name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


# --- odqa train reader ---------------------------------------------------------------------------
@dataclass
class ReaderTrainConfig:
    """Settings of one prompt-tuning run (recorded in the checkpoint and the manifest)."""

    prompt_length: int = 100  # Lester et al.'s default
    template: str = "qa"  # the bare template: the soft prompt replaces instruction and examples
    max_examples: int = 1000  # training questions used (contexts cost a pipeline run each)
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 0.03  # AdamW; the prompt's scale is the embedding table's (std ~0.14 for SmolLM2)
    warmup_steps: int = 10
    eval_every: int = 40
    save_every: int = 10
    patience: int = 3  # evaluations without a better dev EM before stopping
    dev_limit: int | None = None
    seed: int = 0


# --- odqa train reranker -------------------------------------------------------------------------
@dataclass
class RerankerTrainConfig:
    """Settings of one re-ranker training run (recorded in the checkpoint and the manifest)."""

    base: str = "minilm-l6"  # any HF encoder or cross-encoder (name, path or id)
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    batch_questions: int = 4  # B questions per step
    negatives: int = 7  # k hard negatives per question (sampled when there are more)
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    max_length: int = 256
    micro_batch: int = 16  # pairs per forward pass, grouped by length (the step's loss is over all of them)
    max_examples: int | None = None  # a seeded random subset of the training file
    eval_every: int | None = None  # steps between dev evaluations; None: once per epoch (and at the end)
    save_every: int = 25  # steps between checkpoints
    patience: int = 2  # dev evaluations without a better MRR before stopping
    dev_limit: int | None = None  # first N dev questions
    dev_candidates: int | None = None  # first N candidates of each (None: all the retrieval stages return)
    eval_batch_size: int = 64
    seed: int = 0


# --- odqa train recursive ------------------------------------------------------------------------
RECURSIVE_MODES = ("one-pass", "textual", "neural")


@dataclass
class RecursiveTrainConfig:
    """Settings of one run (recorded in the checkpoint and the manifest)."""

    prompt_length: int = 20  # short: ~20-token inputs and a few hundred examples
    max_examples: int = 2000
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 0.03  # soft prompts (AdamW), as the reader trainer
    connector_lr: float = 1e-3
    warmup_steps: int = 10
    eval_every: int = 30
    save_every: int = 10
    patience: int = 3
    dev_limit: int | None = 150
    seed: int = 0
    max_new_tokens: int = 16
    # textual recursion: pass-1 sampling
    num_candidates: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    # neural recursion: the connector and its language-model pre-training
    bottleneck: int = 128
    pretrain: bool = True
    pretrain_steps: int = 200
    pretrain_batch_size: int = 8
    pretrain_lr: float = 1e-3
    chunk_tokens: int = 32
    pretrain_dev_chunks: int = 48
    pretrain_corpus: str = "wiki-vital"


# --- odqa train idpt -----------------------------------------------------------------------------
IDPT_MODES = ("idpt", "prompt", "finetune")
# idpt: the cross-attention network's rate; 1e-4 beat 1e-3 on the mixture's dev split (eval/RESULTS.md)
DEFAULT_LR = {"idpt": 1e-4, "prompt": 0.03, "finetune": 3e-5}


@dataclass
class IDPTTrainConfig:
    """Settings of one run (recorded in the checkpoint and the manifest)."""

    mode: str = "idpt"
    prompt_length: int = 20  # P: vectors of p(x), and of the plain shared prompt
    encoder: str = "minilm-l6"
    encoder_prompt_length: int = 8  # Q: learned vectors prepended to the encoder's input
    attn_dim: int = 128
    heads: int = 4
    max_steps: int = 80
    batch_size: int = 8
    lr: float | None = None  # None: DEFAULT_LR[mode]; for idpt, the cross-attention network's rate
    prompt_lr: float = 0.03  # prompt vectors (plain prompt; idpt's encoder prompt and output bias)
    warmup_steps: int = 10
    eval_every: int = 40
    save_every: int = 10
    patience: int = 3
    dev_per_task: int = 8
    max_input_tokens: int = 128
    max_new_tokens: int = 12
    seed: int = 0

    def __post_init__(self):
        if self.mode not in IDPT_MODES:
            raise PipelineConfigError(f"unknown mode '{self.mode}'; use one of {list(IDPT_MODES)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mode]
