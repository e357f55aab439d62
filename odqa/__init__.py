"""odqa: open-domain question answering on a frozen language model.

    >>> import odqa
    >>> qa = odqa.load("pipelines/frozen_reader.yml")
    >>> result = qa.ask("Who wrote Romeo and Juliet?")
    >>> result.answer, [p.title for p in result.passages]
"""

import os

# Offline by default: an unknown hub id fails at once instead of retrying for ~45 s,
# and Haystack sends no telemetry. Users with network may override both.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"


def load(pipeline_yaml: str):
    """Load a pipeline YAML file and return a :class:`odqa.api.QA` ready to ask."""
    from odqa.api import QA

    return QA.load(pipeline_yaml)


__all__ = ["load", "__version__"]
