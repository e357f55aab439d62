"""``odqa index build``: BM25 + FAISS indexes from a corpus."""

from __future__ import annotations

import json


def cmd_index_build(args) -> int:
    from odqa.index import BM25Config, build_index

    bm25 = BM25Config(method=args.bm25_method, k1=args.bm25_k1, b=args.bm25_b,
                      stemmer=None if args.bm25_stemmer == "none" else args.bm25_stemmer,
                      stopwords=None if args.bm25_stopwords == "none" else args.bm25_stopwords)
    out = build_index(args.corpus, args.out, encoder=args.encoder, query_encoder=args.query_encoder,
                      faiss_type=args.faiss, bm25=bm25, force=args.force, limit=args.limit,
                      batch_size=args.batch_size, shard=args.shard, shards=args.shards)
    if args.shard is not None:
        print(f"shard {args.shard} of {args.shards} encoded into {out}; when every shard is done, run the "
              "same command without --shard/--shards to merge and finish the index")
        return 0
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"built {out}: {manifest['count']} passages, encoder {manifest['encoder']} (dim {manifest['dim']}), "
          f"faiss {manifest['faiss']['type']}")
    return 0


def register(sub) -> None:
    from odqa.configs import BM25Config

    idx = sub.add_parser("index", help="build search indexes").add_subparsers(dest="index_cmd", required=True)
    b = idx.add_parser("build", help="build BM25 + FAISS indexes from a corpus")
    b.add_argument("--corpus", required=True, help="wiki-vital, a DPR psgs_w100.tsv file, or a .jsonl file")
    b.add_argument("--out", required=True, help="index directory to create, e.g. indexes/wiki-vital")
    b.add_argument("--encoder", default="minilm-l6",
                   help="sentence-transformers model, or a DPR context encoder (id or path)")
    b.add_argument("--query-encoder", default=None, help="DPR question encoder (default: derived from --encoder)")
    b.add_argument("--faiss", default="flat", choices=["flat", "ivf", "hnsw"])
    b.add_argument("--bm25-method", default="lucene", choices=["lucene", "robertson", "atire", "bm25l", "bm25+"])
    b.add_argument("--bm25-k1", type=float, default=BM25Config.k1)
    b.add_argument("--bm25-b", type=float, default=BM25Config.b)
    b.add_argument("--bm25-stemmer", default="english", help="a PyStemmer language, or none")
    b.add_argument("--bm25-stopwords", default="none", help="en, or none (default: none, chosen on dev)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    b.add_argument("--force", action="store_true", help="replace an existing index")
    b.add_argument("--shards", type=int, default=1, help="split embedding over N processes (with --shard)")
    b.add_argument("--shard", type=int, default=None,
                   help="encode only this shard (0..N-1); a final run without it merges")
    b.set_defaults(func=cmd_index_build)
