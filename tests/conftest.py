"""Shared fixtures for the fast test suite: tiny random models built in-test, a small corpus, built indexes.

Nothing here touches the bundled models, corpus or benchmark, the network, or ``indexes/``.
Every model is random and tiny (2 layers, hidden size 32), so assertions are about
shapes, types, bookkeeping and errors, never about answer quality.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import odqa  # noqa: F401 - sets HF_HUB_OFFLINE=1 and no telemetry before transformers/haystack load

HIDDEN = 32
# The user's cache dir as it was before the fast tests' private one replaced it; the slow
# tests use it so the real backbone is dequantized once, not once per session.
ORIGINAL_ODQA_HOME = os.environ.get("ODQA_HOME")


def user_env() -> dict:
    """``os.environ`` with the user's ``$ODQA_HOME`` (the dequantized backbone is cached there)."""
    env = {k: v for k, v in os.environ.items() if k != "ODQA_HOME"}
    if ORIGINAL_ODQA_HOME is not None:
        env["ODQA_HOME"] = ORIGINAL_ODQA_HOME
    return env


@contextlib.contextmanager
def user_odqa_home():
    """The user's ``$ODQA_HOME`` in this process while the block runs (the test session's own
    afterwards); yields the environment for subprocesses."""
    saved = os.environ.get("ODQA_HOME")

    def set_home(value):
        if value is None:
            os.environ.pop("ODQA_HOME", None)
        else:
            os.environ["ODQA_HOME"] = value

    set_home(ORIGINAL_ODQA_HOME)
    try:
        yield dict(os.environ)
    finally:
        set_home(saved)

# --- the corpus: 30 passages on distinct topics --------------------------------------------
CORPUS: list[dict] = [
    {"id": "p0", "title": "Romeo and Juliet", "text": "Romeo and Juliet is a tragedy written by William Shakespeare about two young lovers in Verona."},
    {"id": "p1", "title": "Canberra", "text": "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne."},
    {"id": "p2", "title": "Mona Lisa", "text": "The Mona Lisa is a portrait painted by Leonardo da Vinci and kept in the Louvre in Paris."},
    {"id": "p3", "title": "General relativity", "text": "General relativity is the theory of gravitation published by Albert Einstein in 1915."},
    {"id": "p4", "title": "Mars", "text": "Mars is the fourth planet from the Sun and is often called the Red Planet because of iron oxide."},
    {"id": "p5", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought iron lattice tower on the Champ de Mars in Paris, France."},
    {"id": "p6", "title": "Photosynthesis", "text": "Photosynthesis is the process by which green plants turn light, water and carbon dioxide into sugar."},
    {"id": "p7", "title": "Great Wall of China", "text": "The Great Wall of China is a series of fortifications built across the northern borders of China."},
    {"id": "p8", "title": "Amazon River", "text": "The Amazon River in South America is the largest river in the world by discharge of water."},
    {"id": "p9", "title": "Penicillin", "text": "Penicillin was discovered by Alexander Fleming in 1928 at St Mary's Hospital in London."},
    {"id": "p10", "title": "Mount Kilimanjaro", "text": "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa."},
    {"id": "p11", "title": "Moby-Dick", "text": "Moby-Dick is an 1851 novel by Herman Melville about the whaling voyage of Captain Ahab."},
    {"id": "p12", "title": "Telephone", "text": "Alexander Graham Bell was awarded the first United States patent for the telephone in 1876."},
    {"id": "p13", "title": "Pacific Ocean", "text": "The Pacific Ocean is the largest and deepest of the five oceanic divisions of the Earth."},
    {"id": "p14", "title": "Beethoven", "text": "Ludwig van Beethoven was a German composer whose Ninth Symphony ends with the Ode to Joy."},
    {"id": "p15", "title": "DNA", "text": "The double helix structure of DNA was described by James Watson and Francis Crick in 1953."},
    {"id": "p16", "title": "Tokyo", "text": "Tokyo is the capital of Japan and one of the most populous metropolitan areas in the world."},
    {"id": "p17", "title": "Olympic Games", "text": "The first modern Olympic Games were held in Athens, Greece, in the year 1896."},
    {"id": "p18", "title": "Sahara", "text": "The Sahara is the largest hot desert in the world, covering much of North Africa."},
    {"id": "p19", "title": "Python (programming language)", "text": "Python is a programming language created by Guido van Rossum and first released in 1991."},
    {"id": "p20", "title": "Moon landing", "text": "Neil Armstrong was the first person to walk on the Moon during the Apollo 11 mission."},
    {"id": "p21", "title": "Chess", "text": "Chess is a board game for two players played on a checkered board with sixty four squares."},
    {"id": "p22", "title": "Honey bee", "text": "Honey bees live in colonies with a single queen and make honey from the nectar of flowers."},
    {"id": "p23", "title": "Titanic", "text": "The Titanic was a British passenger liner that sank in the North Atlantic Ocean in 1912."},
    {"id": "p24", "title": "Vincent van Gogh", "text": "Vincent van Gogh was a Dutch painter famous for The Starry Night and his sunflowers."},
    {"id": "p25", "title": "Nile", "text": "The Nile is a major river in northeastern Africa that flows north into the Mediterranean Sea."},
    {"id": "p26", "title": "Isaac Newton", "text": "Isaac Newton formulated the laws of motion and universal gravitation in his Principia."},
    {"id": "p27", "title": "Coffee", "text": "Coffee is a drink brewed from roasted coffee beans, which are the seeds of Coffea plants."},
    {"id": "p28", "title": "Mount Everest", "text": "Mount Everest is the highest mountain above sea level, on the border of Nepal and China."},
    {"id": "p29", "title": "Beatles", "text": "The Beatles were an English rock band formed in Liverpool in 1960, with John Lennon."},
]

QUESTIONS = [
    "Who wrote Romeo and Juliet?",
    "What is the capital of Australia?",
    "Who painted the Mona Lisa?",
    "Which planet is known as the Red Planet?",
]

# A Llama-style chat template: the "span-chat" prompt goes through apply_chat_template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _training_texts() -> list[str]:
    from odqa.encoders import PROBE_TEXT
    from odqa.lm.prompting import EXAMPLES, INSTRUCTION

    texts = [INSTRUCTION, PROBE_TEXT, "Passages:", "Question:", "Answer:", "system user assistant"]
    texts += [" ".join(e) for e in EXAMPLES]
    texts += [f"{p['title']}: {p['text']}" for p in CORPUS]
    texts += QUESTIONS
    return texts


def _words() -> list[str]:
    words: set[str] = set()
    for t in _training_texts():
        words.update(re.findall(r"[a-z0-9]+", t.lower()))
    return sorted(words)


# --- environment -----------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def odqa_home(tmp_path_factory) -> Path:
    """A private ``$ODQA_HOME`` for the whole session, so no test reads or writes the user's cache."""
    home = tmp_path_factory.mktemp("odqa_home")
    old = os.environ.get("ODQA_HOME")
    os.environ["ODQA_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ODQA_HOME", None)
    else:
        os.environ["ODQA_HOME"] = old


_HOLDER = """
import sys, time
from odqa.runs import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def hold_lock():
    """``hold_lock(target)``: another process that holds odqa's output lock on ``target`` until the
    test ends (or until the test kills it); returns its ``Popen``."""
    import subprocess
    import sys

    procs = []

    def start(target) -> "subprocess.Popen":
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory in which this process cannot create anything: a ``chmod 555`` directory, or,
    for root (whom file modes do not stop), ``/sys``, where the kernel refuses new entries."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    probe = Path("/sys/odqa-write-probe")
    try:
        probe.mkdir()
    except OSError:
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("root with a writable /sys: no directory here refuses writes")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


# --- corpus files ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in CORPUS), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def corpus_tsv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus_tsv") / "tiny.tsv"
    rows = ["id\ttext\ttitle"] + [f"{p['id']}\t{p['text']}\t{p['title']}" for p in CORPUS]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


# --- tiny causal LM ----------------------------------------------------------------------------
def _lm_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<pad>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _save_tiny_lm(out: Path, chat_template: str | None, seed: int = 0) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _lm_tokenizer(chat_template)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_lm(models_dir) -> str:
    """Directory of a tiny random Llama with a chat template (the default ``span-chat`` path)."""
    return _save_tiny_lm(models_dir / "tiny-lm", CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_lm_plain(models_dir) -> str:
    """The same kind of tiny Llama, with a tokenizer that has no chat template."""
    path = _save_tiny_lm(models_dir / "tiny-lm-plain", None)
    assert not (Path(path) / "chat_template.jinja").exists()
    return path


@pytest.fixture(scope="session")
def backbone(tiny_lm):
    from odqa.lm.backbone import load_backbone

    return load_backbone(tiny_lm)


@pytest.fixture(scope="session")
def soft_prompt_dir(tiny_lm, tmp_path_factory) -> str:
    """A 4-vector soft prompt made for ``tiny_lm`` (its manifest names that exact model string)."""
    import torch

    from odqa.lm.soft_prompt import SoftPrompt

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("artifacts") / "soft_prompt"
    SoftPrompt(torch.randn(4, HIDDEN)).save(out, {"backbone": tiny_lm})
    return str(out)


# --- tiny encoders ---------------------------------------------------------------------------
def _write_vocab(path: Path) -> Path:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,:;!?'\"()-_/&")
    vocab = special + chars + ["##" + c for c in chars] + punct + [w for w in _words() if w not in chars]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return path / "vocab.txt"


def _bert_tokenizer(workdir: Path):
    from transformers import BertTokenizerFast

    vocab_file = _write_vocab(workdir)
    vocab = {w: i for i, w in enumerate(vocab_file.read_text(encoding="utf-8").split("\n")) if w}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    assert len(tok) == len(vocab)
    return tok


def _bert_config(vocab_size: int, hidden: int = HIDDEN, **kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512, **kw)


def _save_st_encoder(out: Path, seed: int) -> str:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertModel

    bert_dir = out.parent / f"{out.name}-bert"
    tok = _bert_tokenizer(bert_dir)
    torch.manual_seed(seed)
    BertModel(_bert_config(len(tok))).save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    st = SentenceTransformer(modules=[Transformer(str(bert_dir), max_seq_length=128), Pooling(HIDDEN)], device="cpu")
    st.save(str(out))
    shutil.rmtree(bert_dir)
    return str(out)


@pytest.fixture(scope="session")
def st_encoder(models_dir) -> str:
    """A tiny random sentence-transformers encoder (BERT, 2 layers, dim 32, mean pooling)."""
    return _save_st_encoder(models_dir / "tiny-st", seed=0)


@pytest.fixture(scope="session")
def st_encoder_other(models_dir) -> str:
    """A second tiny encoder with the same shape but other weights: an index built with one
    must refuse the other."""
    return _save_st_encoder(models_dir / "tiny-st-other", seed=123)


@pytest.fixture(scope="session")
def dpr_encoders(models_dir) -> tuple[str, str]:
    """A tiny DPR pair. The dirs are named ``*ctx_encoder*`` / ``*question_encoder*`` so the
    question encoder's name is derived from the context encoder's, as for the facebook ids."""
    import torch
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    ctx_dir, q_dir = models_dir / "tiny-dpr-ctx_encoder", models_dir / "tiny-dpr-question_encoder"
    tok = _bert_tokenizer(models_dir / "dpr-vocab")
    cfg = DPRConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=512, projection_dim=0)
    torch.manual_seed(7)
    for cls, out in ((DPRContextEncoder, ctx_dir), (DPRQuestionEncoder, q_dir)):
        cls(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return str(ctx_dir), str(q_dir)


@pytest.fixture(scope="session")
def cross_encoder(models_dir) -> str:
    """A tiny random cross-encoder: BertForSequenceClassification with one label."""
    import torch
    from transformers import BertForSequenceClassification

    out = models_dir / "tiny-cross-encoder"
    tok = _bert_tokenizer(out)
    torch.manual_seed(3)
    BertForSequenceClassification(_bert_config(len(tok), num_labels=1)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def bare_bert(models_dir) -> str:
    """A plain BertModel (no classification head): the ranker must refuse it."""
    import torch
    from transformers import BertModel

    out = models_dir / "tiny-bare-bert"
    tok = _bert_tokenizer(out)
    torch.manual_seed(4)
    BertModel(_bert_config(len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


# --- built indexes ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def flat_index(tmp_path_factory, corpus_jsonl, st_encoder) -> str:
    """A flat BM25 + FAISS index of the tiny corpus, built once with the tiny encoder. Read-only:
    tests that damage an index copy it first (see ``copy_index``)."""
    from odqa.index import build_index

    out = tmp_path_factory.mktemp("indexes") / "tiny"
    build_index(corpus_jsonl, out, encoder=st_encoder, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def typed_index(tmp_path_factory, corpus_jsonl, st_encoder, flat_index):
    """``typed_index(kind) -> dir``: the tiny corpus indexed with FAISS type ``kind`` (one of
    ``odqa.index.FAISS_TYPES``), built once per session. Read-only, like ``flat_index``."""
    from odqa.index import build_index

    built = {"flat": flat_index}

    def get(kind: str) -> str:
        if kind not in built:
            out = tmp_path_factory.mktemp("indexes") / f"tiny-{kind}"
            built[kind] = str(build_index(corpus_jsonl, out, encoder=st_encoder, faiss_type=kind, progress=False))
        return built[kind]

    return get


@pytest.fixture
def copy_index(tmp_path, flat_index):
    """Return a fresh copy of the flat index under ``tmp_path`` (a new path, so no process cache hits)."""
    counter = {"n": 0}

    def make() -> Path:
        counter["n"] += 1
        dst = tmp_path / f"index-copy-{counter['n']}"
        shutil.copytree(flat_index, dst)
        return dst

    return make


# --- ID-PT: a tiny prompt generator and its artifact -------------------------------------------
def make_generator(encoder_dir: str, prompt_length: int = 5, randomize: bool = True):
    """A small ID-PT prompt generator on ``encoder_dir``, seeded; its projection randomised unless told not to."""
    import torch

    from odqa.lm.prompt_generator import PromptGenerator, load_encoder

    encoder, _ = load_encoder(encoder_dir)
    torch.manual_seed(0)
    gen = PromptGenerator(encoder, HIDDEN, prompt_length=prompt_length, encoder_prompt_length=3, attn_dim=16, heads=4,
                          init_prompt=torch.randn(prompt_length, HIDDEN))
    if randomize:  # the projection starts at zero (p(x) = the plain prompt); give it weights to test the rest
        torch.nn.init.normal_(gen.out.weight, std=0.5)
    return gen.eval()


def generator_prompt(gen, encoder_dir, texts):
    """``(p(x), encoding)`` of ``texts`` through ``gen``."""
    import torch

    from odqa.lm.prompt_generator import load_encoder

    _, tok = load_encoder(encoder_dir)
    enc = gen.tokenize(tok, texts)
    with torch.no_grad():
        return gen(enc["input_ids"], enc["attention_mask"]), enc


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, tiny_lm, bare_bert) -> str:
    """An ID-PT generator artifact made for ``tiny_lm`` with the ``bare_bert`` encoder."""
    from odqa.lm.backbone import weights_hash

    gen = make_generator(bare_bert)
    out = tmp_path_factory.mktemp("idpt") / "generator"
    gen.save(out, {"backbone": tiny_lm, "encoder": bare_bert, "encoder_hash": weights_hash(gen.encoder)})
    return str(out)


# --- pipeline files --------------------------------------------------------------------------
def _rel(target: str | Path, base: Path) -> str:
    """``target`` relative to ``base``, spelled with a leading ``./`` or ``../`` (as the API expects)."""
    rel = os.path.relpath(target, base)
    return rel if rel.startswith("..") else f"./{rel}"


def pipeline_dict(base: Path, *, index_dir, encoder, lm, ranker=None, context_length=1024,
                  max_new_tokens=4, top_k=5, soft_prompt=None) -> dict:
    """The default frozen-reader pipeline (bm25 + dense -> RRF join [-> ranker] -> packer -> reader),
    with every path written relative to ``base``, the directory the YAML file will live in."""
    lm_rel = _rel(lm, base)
    sp_rel = _rel(soft_prompt, base) if soft_prompt else None
    components = {
        "bm25": {"type": "odqa.components.retrievers.BM25Retriever",
                 "init_parameters": {"index_dir": _rel(index_dir, base), "top_k": top_k}},
        "dense": {"type": "odqa.components.retrievers.DenseRetriever",
                  "init_parameters": {"index_dir": _rel(index_dir, base), "encoder": _rel(encoder, base),
                                      "query_encoder": None, "top_k": top_k}},
        "join": {"type": "haystack.components.joiners.document_joiner.DocumentJoiner",
                 "init_parameters": {"join_mode": "reciprocal_rank_fusion", "top_k": top_k, "sort_by_score": True,
                                     "weights": None}},
        "packer": {"type": "odqa.components.packing.ContextPacker",
                   "init_parameters": {"model": lm_rel, "template": "span-chat", "context_length": context_length,
                                       "max_new_tokens": max_new_tokens, "soft_prompt": sp_rel}},
        "reader": {"type": "odqa.components.readers.FrozenLMReader",
                   "init_parameters": {"model": lm_rel, "template": "span-chat", "soft_prompt": sp_rel,
                                       "context_length": context_length, "max_new_tokens": max_new_tokens,
                                       "num_beams": 1, "dtype": "float32"}},
    }
    connections = [
        {"sender": "bm25.documents", "receiver": "join.documents"},
        {"sender": "dense.documents", "receiver": "join.documents"},
    ]
    if ranker:
        components["ranker"] = {"type": "odqa.components.rankers.CrossEncoderRanker",
                                "init_parameters": {"model": _rel(ranker, base), "top_k": top_k}}
        connections += [{"sender": "join.documents", "receiver": "ranker.documents"},
                        {"sender": "ranker.documents", "receiver": "packer.documents"}]
    else:
        connections.append({"sender": "join.documents", "receiver": "packer.documents"})
    connections.append({"sender": "packer.documents", "receiver": "reader.documents"})
    return {"components": components, "connections": connections}


@pytest.fixture(scope="session")
def write_pipeline(flat_index, st_encoder, tiny_lm):
    """``write_pipeline(dir, **overrides) -> path``: a pipeline YAML in ``dir`` using the tiny models."""
    import yaml

    def write(directory: Path, name: str = "pipeline.yml", **overrides) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        settings = {"index_dir": flat_index, "encoder": st_encoder, "lm": tiny_lm, **overrides}
        path = directory / name
        path.write_text(yaml.safe_dump(pipeline_dict(directory, **settings), sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def pipeline_yaml(tmp_path_factory, write_pipeline) -> Path:
    """The default test pipeline, in its own directory (all paths in it are relative)."""
    return write_pipeline(tmp_path_factory.mktemp("pipelines"))



@pytest.fixture
def make_docs():
    """Build Haystack Documents from (id, title, text) triples, best first."""
    from haystack import Document

    def make(*triples, score: float = 1.0):
        return [Document(id=i, content=text, meta={"title": title}, score=score - n * 0.01)
                for n, (i, title, text) in enumerate(triples)]

    return make
