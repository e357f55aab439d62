"""An odqa pipeline as a hayhooks pipeline wrapper, for users who already serve Haystack with hayhooks.

    pip install 'odqa[hayhooks]'
    HAYSTACK_TELEMETRY_ENABLED=False ODQA_PIPELINE=pipelines/frozen_reader.yml \\
        hayhooks run --pipelines-dir pipelines/hayhooks          # serves pipelines/hayhooks/odqa_ask
    curl -s localhost:1416/odqa_ask/run -d '{"question": "Who wrote Hamlet?"}' -H 'content-type: application/json'

or, into a hayhooks server that is already running:
``hayhooks pipeline deploy-files -n NAME pipelines/hayhooks/odqa_ask``. The directory's
``pipeline_wrapper.py`` only imports :class:`PipelineWrapper` from here; copy the directory to
deploy another pipeline under another name.

What the deployment answers (hayhooks 2.x routes):

- ``POST /NAME/run`` ``{"question", "task"?}``: ``{"result": ...}``, the result being what odqa's
  ``POST /v1/ask`` answers (``Answer.to_dict()`` plus ``"pipeline"``, the pipeline file's stem);
  a bad question gets 422, an unknown task 404, as from ``odqa serve``;
- ``POST /v1/chat/completions`` with ``"model": "NAME"`` (OpenAI-compatible, streaming too): the
  last user message is the question, the answer's text is the reply; ``POST /v1/responses`` alike.

The pipeline file is ``$ODQA_PIPELINE`` (a relative path is read from the directory hayhooks runs
in), else :data:`DEFAULT_PIPELINE`. ``setup()`` loads it and warms it up, so the deploy takes as
long as the models take to load and the first question is not slow. Questions of concurrent
requests are answered together by the same :class:`~odqa.serve.batching.Batcher` as ``odqa serve``
(hayhooks calls ``run_api`` from a thread pool), which also keeps two model calls from running at
once in the process.

Do not name the deployment ``odqa``: hayhooks loads each wrapper directory as a Python package
named after the deployment, which would replace odqa's own package in that process.
``hayhooks pipeline undeploy NAME`` deletes ``NAME/`` under the server's pipelines dir (with
``--pipelines-dir pipelines/hayhooks``, the template in the checkout: serve a copy to undeploy it),
and, hayhooks having no undeploy hook, leaves the models and the batcher's idle thread in the process.
Haystack sends telemetry unless ``HAYSTACK_TELEMETRY_ENABLED=False`` is set before hayhooks starts
(importing odqa sets it, but hayhooks has imported Haystack by then).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    from fastapi import HTTPException
    from hayhooks import BasePipelineWrapper, get_last_user_input_text, get_last_user_message
except ImportError as e:  # odqa itself never imports this module; only a hayhooks deployment does
    raise ImportError(f"odqa's hayhooks wrapper needs hayhooks ({e}); install it with: pip install 'odqa[hayhooks]'") \
        from e

import odqa
from odqa.serve.app import ApiError, _answer_json, _one_answer
from odqa.serve.batching import MODEL_THREAD, Batcher

PIPELINE_ENV = "ODQA_PIPELINE"
# The default pipeline, in the odqa checkout this module belongs to (an editable install).
DEFAULT_PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "frozen_reader.yml"


def pipeline_path() -> Path:
    """The pipeline file to serve: ``$ODQA_PIPELINE``, else :data:`DEFAULT_PIPELINE`."""
    return Path(os.environ.get(PIPELINE_ENV) or DEFAULT_PIPELINE)


def _text(content: Any) -> str:
    """A chat message's text: a plain string, or the text parts of an OpenAI content list."""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type") in ("text", "input_text"))
    return content if isinstance(content, str) else ""


class PipelineWrapper(BasePipelineWrapper):
    """Answers questions with one odqa pipeline, as hayhooks' ``/NAME/run`` and its OpenAI-compatible routes.

    ``max_batch_size`` and ``max_wait_ms`` are ``odqa serve``'s ``--max-batch-size`` and
    ``--max-wait-ms``; set them on a subclass in the deployment's ``pipeline_wrapper.py``.
    """

    max_batch_size = 8
    max_wait_ms = 5

    def setup(self) -> None:
        path = pipeline_path()
        self.qa = odqa.load(str(path))  # odqa's errors name the file and the fix; hayhooks shows them
        MODEL_THREAD.run(self.qa.warm_up)  # where the batcher will call it (odqa.serve.batching)
        self.pipeline = self.qa.pipeline
        self.name = path.stem
        self.batcher = Batcher(self.qa, max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms,
                               name=self.name).start()

    def _answer(self, question: str, task: str | None = None):
        """``(Answer, outputs)`` for ``question``, or the HTTP error ``odqa serve`` would answer."""
        [result] = self.batcher.submit([question], task).future.result()
        try:
            return _one_answer(result, self.name, task)
        except ApiError as e:
            raise HTTPException(status_code=e.status, detail=e.message) from None

    def run_api(self, question: str, task: str | None = None) -> dict:
        """Answer a question from passages the pipeline retrieves: the answer, its score, the passages read.

        :param question: The question, in plain text.
        :param task: Multitask pipelines only: TASK or TASK/TEMPLATE.
        :returns: The answer as odqa's ``POST /v1/ask`` gives it.
        """
        return _answer_json(self._answer(question, task), self.name)

    def run_chat_completion(self, model: str, messages: list[dict], body: dict) -> str:
        question = _text(get_last_user_message(messages))
        if not question.strip():
            raise HTTPException(status_code=422, detail="the chat has no user message with text; the last user "
                                                        "message is the question")
        return self._answer(question)[0].answer

    def run_response(self, model: str, input_items: list[dict], body: dict) -> str:
        question = get_last_user_input_text(input_items) or ""
        if not question.strip():
            raise HTTPException(status_code=422, detail="the input has no user message with text; the last user "
                                                        "message is the question")
        return self._answer(question)[0].answer
