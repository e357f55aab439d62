"""``odqa index build``: BM25 + FAISS indexes from a corpus; ``odqa index export``: an index into a
Haystack document store (Qdrant)."""

from __future__ import annotations

import contextlib
import json

from odqa.cli._common import add_engine_options, engine_from_args


def cmd_index_build(args) -> int:
    from odqa.index import BM25Config, build_index

    bm25 = BM25Config(method=args.bm25_method, k1=args.bm25_k1, b=args.bm25_b,
                      stemmer=None if args.bm25_stemmer == "none" else args.bm25_stemmer,
                      stopwords=None if args.bm25_stopwords == "none" else args.bm25_stopwords)
    engine = engine_from_args(args)
    with engine or contextlib.nullcontext():  # the Ray runtime first: a bad --address fails before any work
        out = build_index(args.corpus, args.out, encoder=args.encoder, query_encoder=args.query_encoder,
                          faiss_type=args.faiss, bm25=bm25, force=args.force, limit=args.limit,
                          batch_size=args.batch_size, engine=engine, pq_m=args.pq_m)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"built {out}: {manifest['count']} passages, encoder {manifest['encoder']} (dim {manifest['dim']}), "
          f"faiss {manifest['faiss']['type']}")
    return 0


def cmd_index_export(args) -> int:
    from odqa.stores import export_index

    result = export_index(args.index, to=args.to, path=args.path, url=args.url, collection=args.collection,
                          recreate=args.recreate)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"exported {result.passages:,} passages of {args.index} to {result.store} at {result.where}, collection "
          f"'{result.collection}': {result.written:,} written, {result.already_there:,} already there, "
          f"in {result.seconds:.1f} s; the collection holds {result.collection_count:,} documents")
    return 0


def register(sub) -> None:
    from odqa.configs import BM25Config
    from odqa.index import FAISS_TYPES

    idx = sub.add_parser("index", help="build search indexes, export them to document stores").add_subparsers(
        dest="index_cmd", required=True)
    b = idx.add_parser("build", help="build BM25 + FAISS indexes from a corpus")
    b.add_argument("--corpus", required=True, help="wiki-vital, a DPR psgs_w100.tsv file, or a .jsonl file")
    b.add_argument("--out", required=True, help="index directory to create, e.g. indexes/wiki-vital")
    b.add_argument("--encoder", default="minilm-l6",
                   help="sentence-transformers model, or a DPR context encoder (id or path)")
    b.add_argument("--query-encoder", default=None, help="DPR question encoder (default: derived from --encoder)")
    b.add_argument("--faiss", default="flat", choices=FAISS_TYPES,
                   help="dense index type: flat (exact), ivf, ivfpq (IVF + product quantization, about a fifth "
                        "of flat's size), hnsw, hnsw-sq8 (HNSW over 8-bit vectors); see indexes/README.md")
    b.add_argument("--pq-m", type=int, default=None,
                   help="with --faiss ivfpq: PQ sub-quantizers, a divisor of the encoder's dimension "
                        "(default: dim/2, e.g. 192 for 384-d; more is bigger and more exact)")
    b.add_argument("--bm25-method", default="lucene", choices=["lucene", "robertson", "atire", "bm25l", "bm25+"])
    b.add_argument("--bm25-k1", type=float, default=BM25Config.k1)
    b.add_argument("--bm25-b", type=float, default=BM25Config.b)
    b.add_argument("--bm25-stemmer", default="english", help="a PyStemmer language, or none")
    b.add_argument("--bm25-stopwords", default="none", help="en, or none (default: none, chosen on dev)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    b.add_argument("--force", action="store_true", help="replace an existing index")
    add_engine_options(b, "--num-encoders", "encoder actors, each loading the encoder once",
                       gpus_flag="--gpus-per-encoder")
    b.set_defaults(func=cmd_index_build)

    e = idx.add_parser("export", help="put an index's passages and vectors into a Haystack document store (Qdrant)")
    e.add_argument("--to", required=True, choices=["qdrant"], help="the document store")
    e.add_argument("--index", required=True, help="the odqa index to export, e.g. indexes/wiki-vital")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--path", help="Qdrant local mode: the store's directory, e.g. indexes/wiki-vital-qdrant")
    where.add_argument("--url", help="a Qdrant server or cluster, e.g. http://localhost:6333 (API key from "
                                     "$QDRANT_API_KEY)")
    e.add_argument("--collection", default=None, help="collection name (default: the index directory's name)")
    e.add_argument("--recreate", action="store_true",
                   help="empty the collection first (after rebuilding the index); without it a rerun resumes, "
                        "writing only the passages not there yet")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_index_export)
