"""Resident memory of `odqa serve`: one pipeline alone against many in one process.

Starts `odqa serve` on a free loopback port with the pipelines named, waits for `/readyz`,
asks one question of each pipeline through `POST /v1/ask`, then reads the server's peak
resident memory (VmHWM) and current RSS from /proc, and stops it. The table goes to
bench/results/serve_memory.md.

    python bench/serve_memory.py --one pipelines/frozen_reader.yml --many 'pipelines/*.yml'
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", default="pipelines/frozen_reader.yml")
    ap.add_argument("--many", default="pipelines/*.yml", help="a glob; files whose name starts with _ are left out")
    ap.add_argument("--question", default="Who wrote Hamlet?")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serve_memory.md"))
    args = ap.parse_args()
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
    return publish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
