"""A hayhooks deployment of an odqa pipeline: copy this directory (its name is the deployment's name).

    ODQA_PIPELINE=pipelines/frozen_reader.yml hayhooks run --pipelines-dir pipelines/hayhooks
    hayhooks pipeline deploy-files -n odqa_ask pipelines/hayhooks/odqa_ask   # into a running server

The wrapper itself is odqa.serve.hayhooks_wrapper (its docstring has the routes and settings).
"""

if __package__ == "odqa":
    # hayhooks loads this directory as a package named after the deployment: 'odqa' would replace odqa itself
    raise ImportError("do not name a hayhooks deployment 'odqa' (it would hide the odqa package); "
                      "deploy it under another name, e.g. -n odqa_ask")

from odqa.serve.hayhooks_wrapper import PipelineWrapper  # noqa: E402, F401 - hayhooks looks for this name
