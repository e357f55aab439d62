"""``odqa serve`` under load on loopback: answers per second and latency for N concurrent clients,
with dynamic batching on and off, and whether batching changes any answer.

The script starts the server itself (``python -m odqa.cli serve PIPELINE --port 0``, its log in a
temporary file), waits for ``GET /readyz`` to answer 200, and for each client count N runs N
threads, each sending one ``POST /v1/ask`` after another (questions taken in turn from the set,
cycled) for ``--seconds``. It does this once with batching on (``--max-batch-size``, default 8)
and once with it off (a second server with ``--max-batch-size 1``), then stops the server, also on
Ctrl-C or an error. The server with batching off then answers, one at a time, every question the
runs asked that its own single-client run did not: those answers are the reference each run's
answers are compared with. The clients run on the same cores as the server.

    python bench/serve_load.py --pipeline pipelines/frozen_reader.yml --clients 1,4,16 --seconds 30
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)
from odqa.data.questions import dedup, load_questions

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2  # untimed requests before each server's first timed run
READY_TIMEOUT_S = 900  # loading and warming up the real models
REQUEST_TIMEOUT_S = 300
STOP_TIMEOUT_S = 20
URL_LINE = re.compile(r"^serving .+ on (http://[^\s;]+);", re.MULTILINE)


def client_counts(text: str) -> list[int]:
    """An argparse type: ``1,4,16`` -> ``[1, 4, 16]``, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"must be client counts of at least 1 separated by commas, e.g. 1,4,16; "
                                         f"got {text!r}")
    return counts


# --- the server ----------------------------------------------------------------------------------
def _log_tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def serve(pipeline: Path, *, max_batch_size: int, max_wait_ms: int, max_concurrency: int):
    """``odqa serve PIPELINE`` on a free 127.0.0.1 port, ready; yields its URL and stops it afterwards."""
    with tempfile.TemporaryDirectory(prefix="odqa-serve-load-") as tmp:
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "odqa.cli", "serve", str(pipeline), "--port", "0",
               "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
               "--max-concurrency", str(max_concurrency)]
        with open(log, "wb") as out:  # a file, not a pipe: uvicorn's access log must never block the server
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        try:
            yield _wait_ready(proc, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_ready(proc: subprocess.Popen, log: Path) -> str:
    """The server's URL (from the line ``odqa serve`` prints), once ``GET /readyz`` answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"odqa serve exited with status {proc.returncode} before it was ready:\n{_log_tail(log)}")
        if url is None:
            found = URL_LINE.search(log.read_text(encoding="utf-8", errors="replace"))
            url = found.group(1) if found else None
        if url is not None:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"odqa serve was not ready after {READY_TIMEOUT_S} s:\n{_log_tail(log)}")


def _batches(url: str) -> int:
    """Model calls the server's (first) pipeline has made so far."""
    return httpx.get(url + "/v1/pipelines", timeout=30).json()[0]["batching"]["batches"]


# --- the clients ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One (server, client count) run: every request's question, status, latency and answer."""

    clients: int
    seconds: float = 0.0
    batches: int = 0
    records: list[tuple[str, int, float, str | None]] = field(default_factory=list)

    @property
    def answered(self) -> list[tuple[str, str]]:
        return [(q, a) for q, status, _, a in self.records if status == 200]

    @property
    def errors(self) -> int:
        return sum(status != 200 for _, status, _, _ in self.records)


def ask(client: httpx.Client, url: str, question: str) -> tuple[int, str | None]:
    """``(status, answer)`` of one ``POST /v1/ask``; a request that fails outright is status 0."""
    try:
        response = client.post(url + "/v1/ask", json={"question": question}, timeout=REQUEST_TIMEOUT_S)
    except httpx.HTTPError:
        return 0, None
    return response.status_code, response.json().get("answer") if response.status_code == 200 else None


def load(url: str, questions: list[str], clients: int, seconds: float) -> Run:
    """``clients`` threads asking questions in turn (from the first, cycled) for ``seconds``."""
    turn = itertools.count()
    lock = threading.Lock()
    stop = threading.Event()  # set on Ctrl-C or an error, so no client goes on alone
    run = Run(clients)
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        with httpx.Client() as http:  # one connection per client, kept alive
            while not stop.is_set() and time.perf_counter() < deadline:
                with lock:
                    question = questions[next(turn) % len(questions)]
                sent = time.perf_counter()
                status, answer = ask(http, url, question)
                with lock:
                    run.records.append((question, status, time.perf_counter() - sent, answer))
                if status == 0:  # the server is unreachable: do not spin
                    stop.wait(0.1)

    batches = _batches(url)
    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
    run.seconds = time.perf_counter() - start
    run.batches = _batches(url) - batches
    return run


# --- the report ----------------------------------------------------------------------------------
def percentiles_ms(latencies: list[float]) -> tuple[float, float, float]:
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 3 if latencies else (float("nan"),) * 3
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def row(label: str, run: Run, reference: dict[str, str]) -> str:
    latencies = [seconds for _, status, seconds, _ in run.records if status == 200]
    p50, p95, p99 = percentiles_ms(latencies)
    answered = run.answered
    same = sum(reference.get(q) == a for q, a in answered)
    mean_batch = f"{len(answered) / run.batches:.1f}" if run.batches else "-"
    return (f"| {label} | {run.clients} | {len(answered)} | {len(answered) / run.seconds:.2f} | {p50:.0f} | "
            f"{p95:.0f} | {p99:.0f} | {run.errors} | {mean_batch} | {same}/{len(answered)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines/frozen_reader.yml"))
    ap.add_argument("--clients", type=client_counts, default=[1, 4, 16], metavar="N,N,...",
                    help="concurrent clients of each run (default 1,4,16)")
    ap.add_argument("--seconds", type=float, default=30, help="length of each run (default 30)")
    ap.add_argument("--questions", default="trivia-wiki:dev", help="question set or file, cycled")
    ap.add_argument("--max-batch-size", type=int, default=8, help="the batching-on server's --max-batch-size")
    ap.add_argument("--max-wait-ms", type=int, default=5, help="the batching-on server's --max-wait-ms")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serve_load.md"))
    args = ap.parse_args(argv)

    pipeline = Path(args.pipeline).resolve()
    questions = list(dict.fromkeys(q.question for q in dedup(load_questions(args.questions))
                                   if isinstance(q.question, str) and q.question.strip()))
    if not questions:
        raise SystemExit(f"{args.questions} has no questions to ask")
    settings = list(dict.fromkeys([args.max_batch_size, 1]))  # batching on, then off (the reference)
    runs: dict[tuple[int, int], Run] = {}
    reference: dict[str, str] = {}
    for size in settings:
        with serve(pipeline, max_batch_size=size, max_wait_ms=args.max_wait_ms,
                   max_concurrency=max(64, *args.clients)) as url:
            with httpx.Client() as http:
                for question in questions[:WARMUP]:
                    ask(http, url, question)
            for clients in args.clients:
                print(f"batch size {size}, {clients} clients, {args.seconds:g} s ...", flush=True)
                runs[size, clients] = load(url, questions, clients, args.seconds)
            if size == 1:  # the reference: single-client answers first, then any question still missing, alone
                alone = runs.get((1, 1))
                reference.update(dict(alone.answered) if alone else {})
                asked = dict.fromkeys(q for run in runs.values() for q, _ in run.answered)
                with httpx.Client() as http:
                    for question in (q for q in asked if q not in reference):
                        status, answer = ask(http, url, question)
                        if status == 200:
                            reference[question] = answer

    import torch  # only for the report's thread count, which the server (same environment) uses too

    on = f"on (max {args.max_batch_size}, wait {args.max_wait_ms} ms)"
    shown = pipeline.relative_to(ROOT) if pipeline.is_relative_to(ROOT) else pipeline
    lines = [
        "# odqa serve under load, on loopback", "",
        f"Command: `{command()}`  ",
        f"Pipeline `{shown}`; {len(questions)} questions of `{args.questions}`, cycled; "
        f"{args.seconds:g} s per run, after {WARMUP} warm-up requests per server. {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
        "the clients (threads, one `POST /v1/ask` after another) share the cores with the server.", "",
        "Latencies are of the answered requests; errors are requests without a 200. Mean batch: questions per "
        "model call. Same as batching off: answers equal to the batching-off server's answer to the same "
        "question (its single-client run, else asked alone afterwards).", "",
        "| batching | clients | answers | answers/s | p50 ms | p95 ms | p99 ms | errors | mean batch | "
        "same as batching off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in reversed(settings):  # off first
        for clients in args.clients:
            lines.append(row("off" if size == 1 else on, runs[size, clients], reference))
    return publish(lines, args.out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server is stopped by then (serve's finally)
        sys.exit("stopped; the server is stopped too, and no report was written")
