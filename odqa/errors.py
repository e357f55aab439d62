"""One exception hierarchy for odqa.

Every message names the bad input and says how to fix it. The CLI prints the
message as one line and exits non-zero; the Python API raises these types.
"""

from __future__ import annotations


class OdqaError(Exception):
    """Base class of every error odqa raises on purpose."""

    exit_code = 2


# --- questions ---------------------------------------------------------------
class BadQuestionError(OdqaError, ValueError):
    """A question odqa cannot answer as given."""


class EmptyQuestionError(BadQuestionError):
    """The question is empty or only whitespace."""


class QuestionTooLongError(BadQuestionError):
    """The question alone does not fit in the reader's token budget."""


# --- pipelines ---------------------------------------------------------------
class PipelineConfigError(OdqaError):
    """A pipeline YAML file that cannot be loaded."""


class MalformedYAMLError(PipelineConfigError):
    """The pipeline file is not valid YAML, or not a Haystack pipeline mapping."""


class UnknownComponentError(PipelineConfigError):
    """The pipeline names a component type that cannot be imported."""


# --- indexes -----------------------------------------------------------------
class IndexError_(OdqaError):
    """Base for index problems (named with a trailing underscore to keep the builtin)."""


class IndexNotFoundError(IndexError_):
    """The index directory does not exist or is not an odqa index."""


class IndexMismatchError(IndexError_):
    """The index was built with a different encoder from the one the pipeline uses."""


class IndexCorruptError(IndexError_):
    """An index file is truncated, altered or unreadable."""


# --- data and resources ------------------------------------------------------
class InputFormatError(OdqaError):
    """A data file (corpus, questions) with a malformed line or field."""


class TextEncodingError(InputFormatError):
    """A text file that is not valid UTF-8."""


class ResourceNotFoundError(OdqaError):
    """A model or data name that is neither bundled, a local path, nor available offline."""


class ArtifactMismatchError(OdqaError):
    """A learned artifact (e.g. a soft prompt) made for another backbone."""


class BackboneChangedError(OdqaError):
    """Training changed (or could change) the frozen backbone's weights."""


class TrainingDataError(InputFormatError):
    """Training data that cannot be used (no examples, no positives, unknown format)."""
