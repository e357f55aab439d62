"""``odqa serve``: one HTTP server for several pipelines, sharing one copy of each backbone.

- :mod:`odqa.serve.app`: the FastAPI app (``create_app``), its endpoints, errors and guards;
- :mod:`odqa.serve.batching`: the dynamic batcher: a worker per pipeline gathers, one model thread answers.

The command is ``odqa serve PIPELINE.yml [PIPELINE.yml ...]`` (:mod:`odqa.cli.serve`).
"""
