"""odqa side by side with a stock Haystack 3.4 RAG pipeline, on the same questions, in one process.

What is measured
----------------
Every question of ``fanoutqa-wiki:test`` (deduplicated by (id, question); ``--limit N`` takes
the first N) is answered by each system below, one question at a time and interleaved
(question 1 by every system, then question 2, ...), so slow drift in machine load hits every
system alike. Per system:

- **EM** and **F1**: ``odqa.metrics`` (SQuAD normalization, best over aliases), after
  ``odqa.lm.prompting.clean_answer`` (first line, no "Answer:" prefix, quotes or final full
  stop) on every system's raw output;
- **context recall**: the share of questions whose answer is in a passage the reader was
  given (DPR ``has_answer`` on ``title\\ntext``): the top 3 fused passages for the Haystack
  pipelines, the packer's passages for odqa (the paper's LM-input recall);
- **median s/q**: wall time of one ``Pipeline.run`` / ``QA.ask``, after one warm-up question
  per system; plus median milliseconds per pipeline stage and median prompt length in tokens.

Systems
-------
``haystack (a)`` / ``haystack (b)``: built only from Haystack's own components::

    question ─┬─ InMemoryBM25Retriever (top 100) ─────────────────────────────┐
              └─ SentenceTransformersTextEmbedder ─ InMemoryEmbeddingRetriever ┴─ DocumentJoiner (RRF, top 3)
                 (top 100)  ─ PromptBuilder / ChatPromptBuilder ─ generator

- Documents: ``Document(id=passage id, content=f"{title}\\n{text}", meta={"title", "text"})``
  in an ``InMemoryDocumentStore`` (BM25L, its defaults). The content carries the title
  because Haystack's BM25 indexes ``content`` only, and ``title\\ntext`` is what odqa's BM25
  and FAISS indexes hold, so both systems search the same text.
- Document embeddings: MiniLM (``odqa.resources.resolve_model("minilm-l6")``), normalized,
  dot product. ``--doc-embeddings haystack`` computes them with
  ``SentenceTransformersDocumentEmbedder`` (about 5 min on 2 cores) and caches them in
  ``$ODQA_HOME/bench/`` (atomic write); ``faiss`` reuses the vectors of
  ``indexes/wiki-vital/dense.faiss`` (``reconstruct_n``: the same normalized MiniLM embeddings
  of ``title\\ntext``, in corpus order), after checking the index's manifest and a sample of
  passages re-embedded with ``SentenceTransformersDocumentEmbedder``. ``auto`` (default)
  takes the cache, else the FAISS index, else embeds.
- 3 passages go into the prompt: stock Haystack has no token-budget packer, and 3 is
  DESIGN.md's baseline setting. No ranker: no trained cross-encoder exists.
- Generator: Haystack 3.x has no local Hugging Face generator, so ``SmolLM2Generator`` /
  ``SmolLM2ChatGenerator`` below are minimal ``@component`` wrappers around
  ``odqa.lm.backbone.load_backbone(backbone)`` (the very model object odqa's reader uses): ``model.generate`` greedy, 16 new tokens, stopping at EOS, end-of-turn or a
  newline (``Backbone.stop_token_ids``, as odqa's reader; ``clean_answer`` keeps only the
  first line anyway, so this affects time, not answers).
- Prompt (a) ``chat``: what a stock Haystack user writes: Haystack's tutorial RAG prompt
  ("Given the following information, answer the question ... briefly") as one user turn,
  rendered with SmolLM2's chat template (which adds its default system prompt).
- Prompt (b) ``qa-completion``: the same plain-text 3-shot prompt as odqa's zero-shot reader
  (``odqa.lm.prompting.INSTRUCTION`` and ``EXAMPLES``, passages as ``title: text``),
  checked at start-up to render byte-identically to odqa's template, so (b) vs odqa
  isolates retrieval and packing.

``odqa zero-shot`` and ``odqa default`` (``--odqa NAME=FILE,...``): by default
``pipelines/frozen_reader_zeroshot.yml`` (no learned modules) and ``pipelines/frozen_reader.yml``
(the default pipeline): bm25s + FAISS flat IP (top 100 each), RRF, ``ContextPacker`` (as many
passages as fit a 384-token window), ``FrozenLMReader`` (greedy, 16 new tokens). Every system
reads with the same backbone (``--backbone``, by default the default pipeline's reader; a
pipeline reading with another is refused). After the interleaved single-stream pass, each odqa
pipeline answers all the questions again in batches of ``--batch-size`` (``QA.ask_many``): its
answers per second, EM, and how many answers equal the single-stream ones.

    python bench/haystack_peer.py --backbone smollm2-135m-instruct \
        --odqa zero-shot=pipelines/frozen_reader_zeroshot.yml,default=pipelines/frozen_reader_smollm2.yml
    python bench/haystack_peer.py --variants qa-completion \
        --odqa zero-shot=pipelines/frozen_reader_gemma_fewshot.yml,default=pipelines/frozen_reader.yml  # Gemma
    python bench/haystack_peer.py --limit 10      # smoke test
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from haystack import Document, Pipeline, component  # noqa: E402
from haystack.components.builders import ChatPromptBuilder, PromptBuilder  # noqa: E402
from haystack.components.joiners import DocumentJoiner  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever, InMemoryEmbeddingRetriever  # noqa: E402
from haystack.dataclasses import ChatMessage  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack_integrations.components.embedders.sentence_transformers import (  # noqa: E402
    SentenceTransformersDocumentEmbedder,
    SentenceTransformersTextEmbedder,
)
from tqdm.auto import tqdm  # noqa: E402

import odqa  # noqa: E402
import odqa.api  # noqa: E402
from odqa.data.corpus import corpus_hash, read_corpus  # noqa: E402
from odqa.lm.backbone import load_backbone, shared_copy  # noqa: E402
from odqa.lm.prompting import EXAMPLES, INSTRUCTION, clean_answer, get_template  # noqa: E402
from odqa.metrics import exact_match, f1, has_answer  # noqa: E402
from odqa.data.questions import dedup, load_questions  # noqa: E402
from odqa.resources import odqa_home, resolve_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "wiki-vital"
ENCODER = "minilm-l6"
BACKBONE = "smollm2-135m-instruct"
QUESTIONS = "fanoutqa-wiki:test"
TOP_K_RETRIEVE = 100  # per retriever, as in pipelines/frozen_reader_zeroshot.yml
TOP_K_PROMPT = 3  # passages into the Haystack prompts
MAX_NEW_TOKENS = 16

# --- prompts -------------------------------------------------------------------------------
# (a) Haystack's tutorial RAG prompt, asking for a brief answer, as a single user turn.
CHAT_TEMPLATE = """Given the following information, answer the question briefly.

Context:
{% for document in documents %}
{{ document.content }}
{% endfor %}

Question: {{ question }}
Answer:"""

# (b) odqa's `qa-completion` text: instruction, three worked examples, passages, question.
_HEADER = "\n".join([INSTRUCTION, ""] + [line for ctx, q, a in EXAMPLES
                                          for line in (ctx, f"Question: {q}", f"Answer: {a}", "")])
QA_COMPLETION_TEMPLATE = (
    _HEADER + "\n"
    "{% for d in documents %}{% if d.meta.title %}{{ d.meta.title }}: {% endif %}{{ d.meta.text }}\n{% endfor %}"
    "Question: {{ question }}\nAnswer:"
)
VARIANTS = {"chat": "a", "qa-completion": "b"}


# --- generators: minimal local wrappers (Haystack 3.x ships no local HF generator) ----------
class _SmolLM2:
    """Shared by both generators: the odqa backbone, greedy decoding."""

    def __init__(self, model: str = BACKBONE, max_new_tokens: int = MAX_NEW_TOKENS):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self._backbone = None

    def warm_up(self) -> None:  # Pipeline.run calls this every time: keep it idempotent
        if self._backbone is None:
            bb = load_backbone(self.model)
            # the same float32 weights (shared, not copied), on transformers' own attention: odqa's
            # backbones decode through odqa.lm.row_attention, which stock Haystack would not
            model = shared_copy(bb.model)
            model.set_attn_implementation("sdpa")
            self._backbone = dataclasses.replace(bb, model=model)

    @torch.inference_mode()
    def _generate(self, ids: list[int]) -> tuple[str, dict]:
        self.warm_up()
        bb = self._backbone
        input_ids = torch.tensor([ids])
        out = bb.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.max_new_tokens,
            do_sample=False, num_beams=1, eos_token_id=bb.stop_token_ids, pad_token_id=bb.tokenizer.pad_token_id,
        )
        new = out[0, input_ids.shape[1]:]
        text = bb.tokenizer.decode(new, skip_special_tokens=True)
        return text, {"prompt_tokens": len(ids), "new_tokens": int(new.shape[0])}


@component
class SmolLM2Generator(_SmolLM2):
    """Text in, text out (like Haystack 1.x/2.x's HuggingFaceLocalGenerator)."""

    @component.output_types(replies=list[str], meta=list[dict])
    def run(self, prompt: str) -> dict[str, Any]:
        self.warm_up()
        ids = self._backbone.tokenizer(prompt)["input_ids"]  # what odqa's encode() does for plain templates
        text, meta = self._generate(ids)
        return {"replies": [text], "meta": [meta]}


@component
class SmolLM2ChatGenerator(_SmolLM2):
    """Chat messages in, chat messages out; the tokenizer's chat template renders the turns."""

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage]) -> dict[str, Any]:
        self.warm_up()
        tok = self._backbone.tokenizer
        turns = [{"role": m.role.value, "content": m.text} for m in messages]
        text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]  # the chat template wrote the special tokens
        reply, meta = self._generate(ids)
        return {"replies": [ChatMessage.from_assistant(reply, meta=meta)]}


# --- documents and embeddings --------------------------------------------------------------
def to_documents(passages) -> list[Document]:
    return [Document(id=p.id, content=f"{p.title}\n{p.text}" if p.title else p.text,
                     meta={"title": p.title, "text": p.text}) for p in passages]


def doc_embedder(progress: bool = True) -> SentenceTransformersDocumentEmbedder:
    return SentenceTransformersDocumentEmbedder(model=resolve_model(ENCODER).path, normalize_embeddings=True,
                                                local_files_only=True, progress_bar=progress)


def _faiss_vectors(passages, index_dir: Path) -> tuple[np.ndarray, float]:
    """The index's passage vectors, after checking they are MiniLM's normalized ``title\\ntext`` ones."""
    import faiss

    manifest = json.loads((index_dir / "manifest.json").read_text())
    chash = corpus_hash(passages)
    problems = [f"{k}={manifest.get(k)!r}, want {v!r}" for k, v in
                (("corpus_hash", chash), ("encoder", ENCODER), ("normalized", True), ("count", len(passages)))
                if manifest.get(k) != v]
    ids = [json.loads(line)["id"] for line in (index_dir / "passages.jsonl").open(encoding="utf-8")]
    if ids != [p.id for p in passages]:
        problems.append("passages.jsonl is not in corpus order")
    if problems:
        raise SystemExit(f"{index_dir} does not match the corpus ({'; '.join(problems)}); "
                         "use --doc-embeddings haystack")
    index = faiss.read_index(str(index_dir / "dense.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal).astype(np.float32)
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(passages), size=32, replace=False).tolist())
    docs = doc_embedder(progress=False).run(to_documents([passages[i] for i in sample]))["documents"]
    diff = float(np.abs(np.array([d.embedding for d in docs]) - vectors[sample]).max())
    if diff > 1e-3:
        raise SystemExit(f"{index_dir}/dense.faiss differs from SentenceTransformersDocumentEmbedder's "
                         f"vectors (max |diff| {diff:.2g}); use --doc-embeddings haystack")
    return vectors, diff


def document_embeddings(passages, mode: str, index_dir: Path) -> tuple[np.ndarray, str]:
    """(n, 384) float32 passage vectors, and a sentence saying where they came from."""
    cache = odqa_home() / "bench" / f"haystack_peer-{ENCODER}-{corpus_hash(passages)[7:19]}.npy"
    if mode in ("auto", "haystack") and cache.exists():
        return np.load(cache), f"`SentenceTransformersDocumentEmbedder`, cached in `{cache}`"
    if mode == "faiss" or (mode == "auto" and (index_dir / "dense.faiss").exists()):
        vectors, diff = _faiss_vectors(passages, index_dir)
        return vectors, (f"reused from `{index_dir.relative_to(ROOT) if index_dir.is_relative_to(ROOT) else index_dir}"
                         f"/dense.faiss` (`reconstruct_n`); 32 sampled passages re-embedded with "
                         f"`SentenceTransformersDocumentEmbedder` match within {diff:.1g}")
    t = time.perf_counter()
    docs = doc_embedder().run(to_documents(passages))["documents"]
    vectors = np.array([d.embedding for d in docs], dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=cache.name + ".", suffix=".tmp", dir=cache.parent)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, vectors)
    os.replace(tmp, cache)
    return vectors, (f"`SentenceTransformersDocumentEmbedder`, computed in this run "
                     f"({time.perf_counter() - t:.0f} s) and cached in `{cache}`")


# --- pipelines -----------------------------------------------------------------------------
def build_store(passages, vectors: np.ndarray) -> InMemoryDocumentStore:
    store = InMemoryDocumentStore(embedding_similarity_function="dot_product")
    docs = [Document(id=d.id, content=d.content, meta=d.meta, embedding=v.tolist())
            for d, v in zip(to_documents(passages), vectors, strict=True)]
    store.write_documents(docs)
    return store


def build_pipeline(store: InMemoryDocumentStore, variant: str, backbone: str = BACKBONE) -> Pipeline:
    p = Pipeline()
    p.add_component("bm25", InMemoryBM25Retriever(document_store=store, top_k=TOP_K_RETRIEVE))
    p.add_component("text_embedder", SentenceTransformersTextEmbedder(
        model=resolve_model(ENCODER).path, normalize_embeddings=True, local_files_only=True, progress_bar=False))
    p.add_component("dense", InMemoryEmbeddingRetriever(document_store=store, top_k=TOP_K_RETRIEVE))
    p.add_component("join", DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=TOP_K_PROMPT))
    p.connect("text_embedder.embedding", "dense.query_embedding")
    p.connect("bm25.documents", "join.documents")
    p.connect("dense.documents", "join.documents")
    if variant == "chat":
        p.add_component("prompt_builder", ChatPromptBuilder(template=[ChatMessage.from_user(CHAT_TEMPLATE)],
                                                            required_variables=["question", "documents"]))
        p.add_component("llm", SmolLM2ChatGenerator(model=backbone))
        p.connect("prompt_builder.prompt", "llm.messages")
    else:
        p.add_component("prompt_builder", PromptBuilder(template=QA_COMPLETION_TEMPLATE,
                                                        required_variables=["question", "documents"]))
        p.add_component("llm", SmolLM2Generator(model=backbone))
        p.connect("prompt_builder.prompt", "llm.prompt")
    p.connect("join.documents", "prompt_builder.documents")
    return p


def check_prompt_identity(pipe: Pipeline, passages, backbone: str = BACKBONE) -> None:
    """Prompt (b) must render exactly as odqa's `qa-completion` template does."""
    docs = to_documents(passages[:3])
    question = "Who wrote Romeo and Juliet?"
    ours = pipe.get_component("prompt_builder").run(question=question, documents=docs)["prompt"]
    tok = load_backbone(backbone).tokenizer
    theirs = get_template("qa-completion").render(tok, question, [(p.title, p.text) for p in passages[:3]])
    if ours != theirs:
        raise SystemExit("prompt (b) does not render like odqa's qa-completion template:\n"
                         f"{ours!r}\n---\n{theirs!r}")


# --- running -------------------------------------------------------------------------------
def timed(fn):
    """Run ``fn()`` and return (result, wall seconds, seconds per Haystack component)."""
    stages: dict[str, float] = {}
    token = odqa.api._timings.set(stages)  # odqa's tracing hook records every component run
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        odqa.api._timings.reset(token)
    return result, time.perf_counter() - start, stages


def ask_haystack(pipe: Pipeline, variant: str, question: str) -> dict:
    data = {"bm25": {"query": question}, "text_embedder": {"text": question}, "prompt_builder": {"question": question}}
    out, secs, stages = timed(lambda: pipe.run(data, include_outputs_from={"join"}))
    if variant == "chat":
        reply = out["llm"]["replies"][0]
        raw, meta = reply.text or "", reply.meta
    else:
        raw, meta = out["llm"]["replies"][0], out["llm"]["meta"][0]
    docs = out["join"]["documents"]
    return {"raw": raw, "secs": secs, "stages": stages, "prompt_tokens": meta["prompt_tokens"],
            "passages": [(d.meta["title"], d.meta["text"]) for d in docs]}


def ask_odqa(qa, question: str) -> dict:
    answer, secs, _ = timed(lambda: qa.ask(question))
    stages = {k: v for k, v in answer.timings.items() if k != "total"}
    return {"raw": answer.meta.get("raw", answer.answer), "secs": secs, "stages": stages,
            "prompt_tokens": answer.meta.get("prompt_tokens"),
            "passages": [(p.title, p.text) for p in answer.passages]}


def score(rec: dict, answers: list[str]) -> dict:
    pred = clean_answer(rec["raw"])
    return rec | {"prediction": pred, "em": exact_match(pred, answers), "f1": f1(pred, answers),
                  "recall": any(has_answer(f"{t}\n{x}", answers) for t, x in rec["passages"])}


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N (deduplicated) test questions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "haystack_peer.md"))
    ap.add_argument("--variants", default="chat,qa-completion",
                    help=f"Haystack prompt variants, comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--doc-embeddings", choices=("auto", "haystack", "faiss"), default="auto",
                    help="where the Haystack store's passage vectors come from (see the module docstring)")
    ap.add_argument("--index", default=str(ROOT / "indexes" / "wiki-vital"), help="odqa index for --doc-embeddings faiss")
    ap.add_argument("--no-odqa", action="store_true", help="skip odqa's rows")
    ap.add_argument("--backbone", default=None, help="the frozen LM every system reads with (default: the default "
                    "pipeline's reader); the odqa pipelines must read with it too")
    ap.add_argument("--odqa", default="zero-shot=pipelines/frozen_reader_zeroshot.yml,default=pipelines/frozen_reader.yml",
                    help="odqa pipelines, NAME=FILE comma-separated (for Gemma's zero-shot row: "
                         "pipelines/frozen_reader_gemma_fewshot.yml)")
    ap.add_argument("--batch-size", type=int, default=8, help="odqa's pipelines also answer in batches of N (0: not)")
    ap.add_argument("--jsonl", default=None, help="also write every prediction here")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")

    t0 = time.perf_counter()
    questions = dedup(load_questions(QUESTIONS))
    n_all = len(questions)
    if args.limit:
        questions = questions[: args.limit]
    passages = read_corpus(CORPUS)

    print(f"{len(passages)} passages; embedding source: {args.doc_embeddings}", file=sys.stderr)
    vectors, emb_source = document_embeddings(passages, args.doc_embeddings, Path(args.index))
    t = time.perf_counter()
    store = build_store(passages, vectors)
    store_secs = time.perf_counter() - t
    del vectors

    odqa_files = {} if args.no_odqa else dict(item.split("=", 1) for item in args.odqa.split(",") if item)
    qas = {f"odqa {name}": odqa.load(ROOT / path) for name, path in odqa_files.items()}
    readers = {name: qa.pipeline.get_component(qa.reader).model for name, qa in qas.items()}
    backbone = args.backbone or odqa.load(ROOT / "pipelines" / "frozen_reader.yml").pipeline.get_component("reader").model
    other = {name: m for name, m in readers.items() if m != backbone}
    if other:
        ap.error(f"every system must read with the same backbone ({backbone}); {other} differ: pass --backbone or "
                 "other --odqa pipelines")
    if "chat" in variants and not load_backbone(backbone).tokenizer.chat_template:
        ap.error(f"backbone '{backbone}' has no chat template for the 'chat' variant; pass --variants qa-completion")
    systems: dict[str, Any] = {f"haystack ({VARIANTS[v]})": (v, build_pipeline(store, v, backbone)) for v in variants}
    if "qa-completion" in variants:
        check_prompt_identity(systems["haystack (b)"][1], passages, backbone)
    systems.update({name: ("odqa", qa) for name, qa in qas.items()})
    odqa.api._install_timer()  # per-stage timings for the Haystack pipelines too

    def ask(name: str, question: str) -> dict:
        kind, obj = systems[name]
        return ask_odqa(obj, question) if kind == "odqa" else ask_haystack(obj, kind, question)

    for name in tqdm(systems, desc="warm-up", unit="system"):  # loads models, first-call costs
        ask(name, "Who wrote Romeo and Juliet?")

    records: dict[str, list[dict]] = {name: [] for name in systems}
    load_before = os.getloadavg()
    bar = tqdm(questions, desc="answering", unit="q")
    for q in bar:
        for name in systems:
            records[name].append(score(ask(name, q.question), q.answers) | {"id": q.id, "question": q.question,
                                                                            "answers": q.answers})
        bar.set_postfix({n.replace("haystack ", "hs"): f"{100 * statistics.mean(r['em'] for r in rs):.0f}"
                         for n, rs in records.items()})
    batched: dict[str, dict] = {}  # odqa pipelines answering the same questions N at a time
    if args.batch_size > 1:
        for name, qa in tqdm(qas.items(), desc=f"batches of {args.batch_size}", unit="system"):
            start = time.perf_counter()
            answers = qa.ask_many([q.question for q in questions], progress=False, batch_size=args.batch_size)
            secs = time.perf_counter() - start
            preds = [clean_answer(a.meta.get("raw", a.answer)) for a in answers]
            batched[name] = {"secs": secs, "em": [exact_match(p, q.answers) for p, q in zip(preds, questions)],
                             "same": sum(p == r["prediction"] for p, r in zip(preds, records[name]))}
    load_after = os.getloadavg()
    total = time.perf_counter() - t0

    if args.jsonl:
        with open(args.jsonl, "w", encoding="utf-8") as fh:
            for name, rs in records.items():
                for r in rs:
                    fh.write(json.dumps({"system": name} | {k: v for k, v in r.items() if k != "passages"},
                                        ensure_ascii=False) + "\n")

    text = report(args, questions, n_all, records, emb_source, store_secs, total, load_before, load_after, backbone,
                  odqa_files, batched)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


RETRIEVAL = {
    "haystack": "InMemoryBM25Retriever + InMemoryEmbeddingRetriever (top 100 each), RRF, top 3",
    "odqa": "bm25s + FAISS flat IP (top 100 each), RRF, packer (384-token window)",
}
PROMPT = {
    "chat": "(a) the backbone's chat template, Haystack tutorial prompt, \"answer briefly\"",
    "qa-completion": "(b) odqa `qa-completion` (plain text, 3-shot)",
}


def odqa_prompt(qa) -> str:
    reader = qa.pipeline.get_component(qa.reader)
    learned = f" + the soft prompt `{Path(reader.soft_prompt).name}`" if reader.soft_prompt else " (no learned module)"
    return f"odqa `{reader.template}`{learned}"


def report(args, questions, n_all, records, emb_source, store_secs, total, load_before, load_after, backbone,
           odqa_files, batched) -> str:
    import resource

    n = len(questions)
    pct = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
    rows, detail = [], []
    base = records.get("haystack (b)") or next(iter(records.values()))
    base_rate = len(base) / sum(r["secs"] for r in base)
    for name, rs in records.items():
        kind = "odqa" if name.startswith("odqa") else "haystack"
        prompt = (f"`{odqa_files[name[len('odqa '):]]}`" if kind == "odqa" else
                  PROMPT[{"haystack (a)": "chat", "haystack (b)": "qa-completion"}[name]])
        rate = len(rs) / sum(r["secs"] for r in rs)
        b = batched.get(name)
        batch_cols = (f"{n / b['secs']:.2f} ({n / b['secs'] / base_rate:.1f}x) | {pct(b['em']):.1f} | {b['same']}/{n}"
                      if b else "– | – | –")
        rows.append(f"| {name} | {RETRIEVAL[kind]} | {prompt} | {pct([r['em'] for r in rs]):.1f} | "
                    f"{pct([r['f1'] for r in rs]):.1f} | {pct([r['recall'] for r in rs]):.1f} | "
                    f"{median([r['secs'] for r in rs]):.2f} | {rate:.2f} ({rate / base_rate:.1f}x) | {batch_cols} |")
        stage_names = list(dict.fromkeys(k for r in rs for k in r["stages"]))
        stages = ", ".join(f"{k} {1000 * median([r['stages'].get(k, 0.0) for r in rs]):.0f}" for k in stage_names)
        detail.append(f"| {name} | {median([r['prompt_tokens'] for r in rs]):.0f} | "
                      f"{statistics.mean(len(r['passages']) for r in rs):.1f} | {stages} |")
    examples = []
    for i, q in enumerate(questions[:5]):
        preds = " / ".join(f"{name}: `{records[name][i]['prediction']}`" for name in records)
        examples.append(f"- {q.question} (gold: {q.answers[0]!r}) — {preds}")

    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    label = (f"**Smoke test: the first {n} questions only (`--limit {args.limit}`); too few for conclusions.**"
             if args.limit else f"All {n} questions.")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# odqa vs a stock Haystack 3.4 pipeline

Command: `{cmd}` (from the repository root), {date}, on {platform.machine()} with {os.cpu_count()} CPU cores,
torch {torch.__version__} with {torch.get_num_threads()} threads, no GPU. The whole run took {total:.0f} s.
Load average (1 min) {load_before[0]:.1f} before answering, {load_after[0]:.1f} after; the machine was
shared with other jobs, so timings are indicative.

{label} Questions: `{QUESTIONS}`, deduplicated by (id, question) with `odqa.data.questions.dedup`.
Every system answered each question in turn, in one process, after one warm-up question each.

| system | retrieval | prompt | EM | F1 | context recall | median s/q | answers/s single (× haystack (b)) | answers/s in batches of {args.batch_size} (×) | EM batched | batched = single |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Peak memory of this whole process (every system loaded at once, `getrusage` max RSS):
{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB. Batched rows: `QA.ask_many(questions,
batch_size={args.batch_size})` over all the questions, after the interleaved single-stream pass.

- EM / F1: `odqa.metrics` (SQuAD normalization, best over aliases), after
  `odqa.lm.prompting.clean_answer` on every system's raw output (first line, no "Answer:"
  prefix, quotes or final full stop).
- Context recall: the answer is in a passage given to the reader (DPR `has_answer` on
  `title\\ntext`): the top {TOP_K_PROMPT} fused passages for Haystack (it has no token-budget
  packer), the packer's passages for odqa.
- median s/q: wall time of one `Pipeline.run` (Haystack) or `QA.ask` (odqa).
- Reader everywhere: the same `{backbone}` weights (`odqa.lm.backbone.load_backbone`), greedy,
  at most {MAX_NEW_TOKENS} new tokens, stopping at EOS / end-of-turn / newline. Haystack's
  generator runs them in float32 with transformers' own attention (sdpa); an odqa pipeline runs
  them as its reader's YAML says (`quantize: int8`: int8 linear layers built from those weights).
  The Haystack generators are minimal `@component` wrappers defined in this script (Haystack 3.x
  ships no local Hugging Face generator); they cannot be serialized, which a bench does not need.
- Haystack documents: `Document(content=f"{{title}}\\n{{text}}", meta={{"title", "text"}})` in an
  `InMemoryDocumentStore` (BM25L defaults; dot product over normalized MiniLM vectors). The title is
  in the content because Haystack's BM25 indexes content only, and `title\\ntext` is what odqa's
  indexes hold. Prompt (a) shows `content`; prompt (b) shows `title: text`, as odqa does, and was
  checked to render byte-identically to odqa's `qa-completion` template.
- Haystack passage vectors: {emb_source}. Writing the 10,033 documents into the store (BM25
  statistics) took {store_secs:.1f} s.

| system | median prompt tokens | passages read (mean) | median ms per stage |
|---|---|---|---|
{chr(10).join(detail)}

First predictions:

{chr(10).join(examples)}

Full run: `python bench/haystack_peer.py` (all {n_all} deduplicated test questions).
"""


if __name__ == "__main__":
    main()
