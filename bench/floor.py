"""This machine's limit for the reader, and how close the reader comes to it.

1. Measures float32 matrix-multiply throughput at the reader's own shapes (every distinct Linear
   of the backbone, fed as many rows as the measured prompts' bodies hold; through MKL and through
   oneDNN, torch's two CPU libraries, and the floor takes the faster), int8 throughput at
   the same shapes (int8 x int8 -> int32, exact, by the kernel odqa runs on this CPU:
   :class:`odqa.lm.quantization.Int8Weight`), and memory read bandwidth (summing a tensor
   several times the size of the caches).
2. Runs the pipeline on real questions and records each answer's prompt: the tokens the reader
   computes (the body after the cached prefix) and the tokens it generates.
3. Counts, per answer, the prefill FLOPs (2 x weights touched x body tokens, plus attention over
   the prefix and the body) and the bytes each decoding step must read (every weight once, plus
   the keys and values so far), and prints the floor: prefill FLOPs / the measured throughput +
   decoding bytes / the measured bandwidth, in seconds per answer, beside the reader's median
   time as a ratio of it. A reader with ``quantize: int8`` is also held to the floor of the
   precision it runs in: its int8 layers at the int8 rate and one byte per weight, the rest at
   float32's. Greedy decoding's int8-screened output head (:mod:`odqa.lm.screened_head`) counts
   so too, for every reader that runs it.

    python bench/floor.py --pipeline pipelines/frozen_reader.yml --questions trivia-wiki:dev --limit 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import odqa
from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.data.questions import dedup, load_questions
from odqa.lm import onednn
from odqa.lm.prompting import encode_prefix, get_template
from odqa.lm.quantization import Int8Linear, Int8Weight, int8_kernel
from odqa.lm.screened_head import screened_head

ROOT = Path(__file__).resolve().parent.parent


def best_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def linear_shapes(model, int8: bool) -> dict[tuple[int, int], int]:
    """``(in, out) -> count`` of the decoder's float Linear layers (the LM head apart), or of its
    int8 ones (``quantize: int8``, :class:`odqa.lm.quantization.Int8Linear`)."""
    head = model.get_output_embeddings()
    kind = Int8Linear if int8 else torch.nn.Linear
    shapes: dict[tuple[int, int], int] = {}
    for m in model.modules():
        if isinstance(m, kind) and m is not head:
            key = (m.in_features, m.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def matmul_seconds(shapes, rows: int) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """``(in, out) -> (float32 s, through MKL, through oneDNN, int8 s)``: one matmul of ``rows`` rows at each
    Linear shape, timed once each way. Float32 is the faster of torch's two CPU libraries, MKL
    (``torch.matmul``) and oneDNN (:mod:`odqa.lm.onednn`, what odqa's frozen models run where
    :func:`odqa.lm.onednn.chosen`)."""
    seconds = {}
    for n_in, n_out in shapes:
        x, w = torch.randn(rows, n_in), torch.randn(n_in, n_out)
        w_rows = w.t().contiguous()  # an nn.Linear's [out, in] weight
        xi = torch.randint(-127, 127, (rows, n_in), dtype=torch.int8)
        wi = Int8Weight(torch.randint(-127, 127, (n_out, n_in), dtype=torch.int8))
        mkl = best_seconds(lambda: torch.matmul(x, w))
        dnn = (best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, w_rows, None, "none", [], ""))
               if onednn.available() else mkl)
        seconds[(n_in, n_out)] = (min(mkl, dnn), mkl, dnn, best_seconds(lambda: wi(xi)))
    return seconds


def matmul_throughput(seconds, shapes: dict[tuple[int, int], int], rows: int) -> tuple[float, float, float, float]:
    """(float32 FLOP/s, through MKL, through oneDNN, int8 OP/s) over ``shapes``, weighted as the model
    uses them, from :func:`matmul_seconds`."""
    flops = sum(count * 2 * rows * n_in * n_out for (n_in, n_out), count in shapes.items())
    return tuple(flops / sum(count * seconds[shape][k] for shape, count in shapes.items()) for k in range(4))


def read_bandwidth(megabytes: int = 1024) -> float:
    """Bytes per second read by summing a float32 tensor of ``megabytes``."""
    x = torch.ones(megabytes * 2**20 // 4)
    return x.numel() * 4 / best_seconds(lambda: x.sum(), repeats=3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines/frozen_reader.yml"))
    ap.add_argument("--questions", default="trivia-wiki:dev")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/results/floor.md"))
    args = ap.parse_args()

    qa = odqa.load(args.pipeline)
    qa.warm_up()
    reader = qa.pipeline.get_component(qa.reader)
    model, cfg = reader._backbone.model, reader._backbone.model.config
    questions = [q.question for q in dedup(load_questions(args.questions))][: args.limit + 2]
    qa.ask_many(questions[:2], progress=False)  # warm-up
    answers = qa.ask_many(questions[2:], progress=False)
    # the positions the prefix cache holds (soft prompt + the template's fixed head): computed once
    # per process, so an answer computes only the rest of its prompt
    head_ids = encode_prefix(reader._backbone.tokenizer, get_template(reader.template)) if reader.prefix_cache else []
    prefix = len(head_ids) + (reader._soft.length if reader._soft is not None else 0)
    bodies = [a.meta["prompt_tokens"] - prefix for a in answers]
    steps = [a.meta["new_tokens"] for a in answers]
    measured = statistics.median(a.timings[qa.reader] for a in answers)

    float_shapes, int8_shapes = linear_shapes(model, int8=False), linear_shapes(model, int8=True)
    shapes = {k: float_shapes.get(k, 0) + int8_shapes.get(k, 0) for k in {*float_shapes, *int8_shapes}}
    weights = sum(count * n_in * n_out for (n_in, n_out), count in shapes.items())
    weights8 = sum(count * n_in * n_out for (n_in, n_out), count in int8_shapes.items())  # quantized ones
    head_layer = model.get_output_embeddings()
    head = head_layer.in_features * head_layer.out_features
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", d // cfg.num_attention_heads)
    # queries x keys and weights x values run over heads x head size, which for Gemma (4 x 256) is
    # not the hidden size (640)
    attn_dim = cfg.num_attention_heads * head_dim
    kv_dim = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * head_dim
    bytes_per = next(model.parameters()).element_size()
    # greedy decoding reads a float head through its int8 screen (odqa/lm/screened_head.py): a byte per
    # weight, at the int8 rate; the 16 candidates it recomputes in float, and the few more rows
    # recomputed where its proof needs them, are left out
    screened = screened_head(model) is not None
    head_bytes = 1 if isinstance(head_layer, Int8Linear) or screened else bytes_per
    rows = max(1, int(statistics.median(bodies)))
    seconds = matmul_seconds(shapes, rows)
    fp32, fp32_mkl, fp32_dnn, int8 = matmul_throughput(seconds, shapes, rows)
    fp32_rest = matmul_throughput(seconds, float_shapes, rows)[0] if weights8 and float_shapes else fp32
    int8_own = matmul_throughput(seconds, int8_shapes, rows)[3] if weights8 else int8
    bandwidth = read_bandwidth()

    floors, int8_floors, as_run = [], [], []
    for body, n_new in zip(bodies, steps):
        # prefill: every weight once per body token, attention of each body token over what precedes it,
        # the LM head for the last position only
        attention = 4 * layers * attn_dim * body * (prefix + (body + 1) / 2)
        prefill = 2 * weights * body + attention + 2 * head
        # decoding: steps after the first token (which prefill yields); each reads every weight, the
        # LM head and the keys/values so far
        kv = lambda t: 2 * layers * kv_dim * t * bytes_per  # noqa: E731
        decode = sum((weights + head) * bytes_per + kv(prefix + body + s) for s in range(1, n_new))
        floors.append(prefill / fp32 + decode / bandwidth)
        int8_floors.append(prefill / int8 + sum((weights + head) + kv(prefix + body + s) for s in range(1, n_new))
                           / bandwidth)
        # as it runs: the int8 layers at the int8 rate and a byte per weight, the rest in float32
        rest = 2 * (weights - weights8) * body + attention + (0 if screened else 2 * head)
        step_bytes = weights8 + (weights - weights8) * bytes_per + head * head_bytes
        as_run.append((2 * weights8 * body / int8_own if weights8 else 0.0) + rest / fp32_rest
                      + (2 * head / int8 if screened else 0.0)
                      + sum(step_bytes + kv(prefix + body + s) for s in range(1, n_new)) / bandwidth)
    floor, floor8, floor_run = statistics.median(floors), statistics.median(int8_floors), statistics.median(as_run)
    precision = (f"int8 for {weights8 / 1e6:.1f}M of {weights / 1e6:.1f}M decoder weights"
                 f"{' and the LM head' if isinstance(head_layer, Int8Linear) else ''}, the rest float32"
                 if weights8 else "float32")
    if screened:
        precision += ", the LM head screened in int8"
    lines = [
        f"# The reader against this machine's limit: `{Path(args.pipeline).name}`", "",
        f"Command: `{command()}`  ",
        f"{len(answers)} questions of `{args.questions}`; {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()}; backbone `{reader.model}` ({reader.dtype}, quantize: "
        f"{getattr(reader, 'quantize', None) or 'none'}).", "",
        "| quantity | value |", "|---|---|",
        f"| float32 matmul at the reader's shapes ({int(statistics.median(bodies))} rows), the faster library "
        f"| {fp32 / 1e9:.0f} GFLOP/s |",
        f"| the same through MKL (`torch.matmul`) / oneDNN (the reader runs "
        f"{'oneDNN' if onednn.chosen() else 'MKL'}; ATen CPU capability {torch.backends.cpu.get_cpu_capability()}) "
        f"| {fp32_mkl / 1e9:.0f} / {f'{fp32_dnn / 1e9:.0f}' if onednn.available() else 'absent'} GFLOP/s |",
        f"| int8 matmul (exact, kernel `{int8_kernel()}`) at the same shapes "
        f"| {int8 / 1e9:.0f} GOP/s |",
        f"| memory read bandwidth (1 GB sum) | {bandwidth / 1e9:.1f} GB/s |",
        f"| decoder weights (Linear layers) / LM head | {weights / 1e6:.1f}M / {head / 1e6:.1f}M parameters |",
        f"| cached prefix / body tokens computed per answer (median) | {prefix} / {statistics.median(bodies):.0f} |",
        f"| generated tokens per answer (median) | {statistics.median(steps):.0f} |",
        f"| prefill GFLOP per answer (median) | {statistics.median(2 * weights * b for b in bodies) / 1e9:.1f} + attention |",
        f"| bytes read per decoding step | {((weights + head) * bytes_per) / 1e6:.0f} MB + keys/values |",
        f"| **floor, float32** (median over answers) | **{floor:.3f} s** |",
        f"| floor if weights and matmuls were int8 | {floor8:.3f} s |",
        f"| **floor as the reader runs** ({precision}) | **{floor_run:.3f} s** |",
        f"| reader, measured median | {measured:.3f} s |",
        f"| measured / float32 floor | {measured / floor:.2f}x |",
        f"| **measured / floor as it runs** | **{measured / floor_run:.2f}x** |",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
