"""``odqa serve``: answer questions over HTTP with one or more pipelines in one process.

    odqa serve pipelines/frozen_reader.yml pipelines/frozen_reader_bm25.yml --port 8000
    curl -s localhost:8000/v1/ask -d '{"question": "Who wrote Hamlet?"}' -H 'content-type: application/json'

The server binds to 127.0.0.1 unless ``--host`` says otherwise. The pipeline files are read and the
port is bound before the server starts, so a missing file, two files with one name or a port in use
is one error line. The models then load and warm up while ``/readyz`` answers 503. Haystack's
telemetry is off: the command sets ``HAYSTACK_TELEMETRY_ENABLED=False`` before Haystack is imported.
The endpoints are described in :mod:`odqa.serve.app`.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import sys
import threading

from odqa.cli._common import positive_int
from odqa.errors import OdqaError


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free port, printed at start)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or one error naming the address and the fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OdqaError(f"cannot listen on host '{host}': {e.strerror}; use an address such as 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        import errno

        fix = {errno.EADDRINUSE: "another process is listening there; stop it or pick another --port",
               errno.EACCES: "ports below 1024 need privileges; pick another --port, e.g. 8000",
               errno.EADDRNOTAVAIL: "this machine has no such address; use 127.0.0.1 or one of its own"}
        raise OdqaError(f"cannot listen on {host}:{port}: {e.strerror}; "
                        f"{fix.get(e.errno, 'pick another --host or --port')}") from None
    sock.listen(2048)  # connections queue from now on, before uvicorn takes the socket over
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _log_config() -> dict:
    """uvicorn's logging, with odqa's server messages (loading, readiness, errors) beside its own."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["odqa"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _stop_if_loading_fails(service, server) -> None:
    """Ends the server when a pipeline cannot warm up (the command then reports why)."""
    service.settled.wait()
    if service.failed is not None:
        server.should_exit = True


def cmd_serve(args) -> int:
    os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # before anything imports haystack
    import uvicorn

    from odqa.serve.app import create_app, name_pipelines

    api_key = args.api_key if args.api_key is not None else os.environ.get("ODQA_API_KEY")
    if api_key is not None and not api_key.strip():
        raise OdqaError("the API key is empty; pass --api-key KEY (or set ODQA_API_KEY), or leave both unset")
    app = create_app(name_pipelines(args.pipelines), api_key=api_key, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                     max_concurrency=args.max_concurrency)
    service = app.state.service
    sock = listen(args.host, args.port)
    print(f"serving {', '.join(service.files)} (default: {service.default}) on {_url(sock)}; "
          "GET /readyz answers 200 once the models are warm", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach it can use it; "
              "set ODQA_API_KEY", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_config=_log_config(), timeout_graceful_shutdown=10))
    threading.Thread(target=_stop_if_loading_fails, args=(service, server), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C: a normal stop
        print("stopped", file=sys.stderr)
    finally:
        sock.close()
    if service.failed is not None:
        raise service.failed
    return 0


def register(sub) -> None:
    s = sub.add_parser("serve", help="answer questions over HTTP, several pipelines in one process",
                       description="Serve pipelines over HTTP: POST /v1/ask, POST /v1/ask_many, GET /v1/pipelines, "
                                   "GET /healthz, GET /readyz, GET /openapi.json. Each pipeline is named by its "
                                   "file's stem; the first is the default.")
    s.add_argument("pipelines", nargs="+", metavar="PIPELINE.yml", help="pipeline files to serve")
    s.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=port_number, default=8000, metavar="PORT",
                   help="port to listen on (default 8000; 0: any free port)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require this key on every endpoint but /healthz and /readyz (the ODQA_API_KEY "
                        "environment variable does the same and keeps the key out of the process list)")
    s.add_argument("--max-batch-size", type=positive_int, default=8, metavar="N",
                   help="most questions of concurrent requests answered together (1: no batching)")
    s.add_argument("--max-wait-ms", type=positive_int, default=5, metavar="MS",
                   help="how long the first waiting question waits for others to join its batch")
    s.add_argument("--max-body-bytes", type=positive_int, default=1_000_000, metavar="BYTES",
                   help="largest request body (413 above)")
    s.add_argument("--max-concurrency", type=positive_int, default=64, metavar="N",
                   help="most requests in flight (503 with Retry-After above)")
    s.set_defaults(func=cmd_serve)
