"""Resident memory of `odqa serve`: one pipeline alone against many in one process.

Starts `odqa serve` on a free loopback port with the pipelines named, waits for `/readyz`,
asks one question of each pipeline through `POST /v1/ask`, then reads the server's peak
resident memory (VmHWM) and current RSS from /proc, and stops it. The table goes to
bench/results/serve_memory.md.

    python bench/serve_memory.py --one pipelines/frozen_reader.yml --many 'pipelines/*.yml'

``--each`` adds where the memory goes: one child process loads the pipelines as the server does
(``odqa.load``, ``warm_up``), one at a time, the ``--one`` pipeline first, asks each the question,
and reads its resident memory after each; the table gives what each pipeline added.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _report import command, publish  # bench/_report.py (scripts run as python bench/NAME.py)

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 2**20  # kB -> GB
    return fields


def _call(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def measure(pipelines: list[str], question: str) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "odqa.cli", "serve", *pipelines, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 1800
        while True:
            if server.poll() is not None:
                raise SystemExit(f"odqa serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                if _call(f"{base}/readyz", timeout=5).get("ready"):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("odqa serve was not ready within 30 minutes")
            time.sleep(2)
        names = [p["name"] for p in _call(f"{base}/v1/pipelines")]
        answered = 0
        for name in names:
            try:
                _call(f"{base}/v1/ask", {"question": question, "pipeline": name})
                answered += 1
            except OSError as e:  # a pipeline that refuses the question (e.g. a task pipeline) still counts in memory
                print(f"  {name}: {e}", file=sys.stderr)
        return {"pipelines": len(names), "answered": answered, **_status(server.pid)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def each_child(pipelines: list[str], question: str) -> None:
    """In this process: load, warm and ask each pipeline in turn, printing one JSON line of /proc
    figures after each (``--child-each``, run by :func:`each`)."""
    import odqa
    from odqa.errors import OdqaError

    keep = []  # every pipeline stays loaded, as in one server
    for path in pipelines:
        qa = odqa.load(path)
        qa.warm_up()
        try:
            qa.ask(question)
            answered = True
        except OdqaError:  # a task pipeline refuses a bare question; its memory still counts
            answered = False
        keep.append(qa)
        print(json.dumps({"pipeline": path, "answered": answered, **_status(os.getpid())}), flush=True)


def each(pipelines: list[str], question: str) -> list[dict]:
    proc = subprocess.run([sys.executable, __file__, "--question", question, "--child-each", *pipelines],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"the --each child failed: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def each_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## Where it goes: the pipelines added one at a time in one process (`--each`)", "",
             "RSS after loading, warming and asking each pipeline, all earlier ones still loaded; "
             "\"added\" is the RSS it added (GB).", "",
             "| # | pipeline | answered | RSS GB | anonymous / file-backed GB | added | added anonymous / file-backed |",
             "|---|---|---|---|---|---|---|"]
    before = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | `{r['pipeline']}` | {'yes' if r['answered'] else 'no'} | {r['VmRSS']:.2f} | "
                     f"{r['RssAnon']:.2f} / {r['RssFile']:.2f} | {r['VmRSS'] - before['VmRSS']:+.3f} | "
                     f"{r['RssAnon'] - before['RssAnon']:+.3f} / {r['RssFile'] - before['RssFile']:+.3f} |")
        before = r
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", default="pipelines/frozen_reader.yml")
    ap.add_argument("--many", default="pipelines/*.yml", help="a glob; files whose name starts with _ are left out")
    ap.add_argument("--question", default="Who wrote Hamlet?")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serve_memory.md"))
    ap.add_argument("--each", action="store_true", help="also each pipeline's share, added one at a time")
    ap.add_argument("--child-each", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_each is not None:
        each_child(args.child_each, args.question)
        return 0
    many = sorted(p for p in glob.glob(args.many) if not os.path.basename(p).startswith("_"))
    rows = [("one", [args.one], measure([args.one], args.question)), ("many", many, measure(many, args.question))]
    one = rows[0][2]["VmHWM"]
    lines = [f"# `odqa serve`: memory of one pipeline against {len(many)} in one process", "",
             f"Command: `{command()}`  ",
             f"Each server: `/readyz`, then `{args.question}` asked of every pipeline it serves, then its peak "
             "resident memory (VmHWM) and current RSS read from /proc.", "",
             "| served | pipelines | answered | peak RSS (VmHWM) GB | RSS now GB | anonymous / file-backed GB | × one |",
             "|---|---|---|---|---|---|---|"]
    for label, paths, m in rows:
        what = f"`{paths[0]}`" if label == "one" else f"all of `{args.many}`"
        lines.append(f"| {what} | {m['pipelines']} | {m['answered']} | {m['VmHWM']:.2f} | {m['VmRSS']:.2f} | "
                     f"{m['RssAnon']:.2f} / {m['RssFile']:.2f} | {m['VmHWM'] / one:.2f}× |")
    if args.each:
        lines += each_lines(each([args.one] + [p for p in many if p != args.one], args.question))
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
