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


class QuestionTypeError(BadQuestionError, TypeError):
    """The question is not a string (e.g. a number or ``None``)."""


# --- pipelines ---------------------------------------------------------------
class PipelineConfigError(OdqaError):
    """A pipeline YAML file that cannot be loaded."""


class MalformedYAMLError(PipelineConfigError):
    """The pipeline file is not valid YAML, or not a Haystack pipeline mapping."""


class UnknownComponentError(PipelineConfigError):
    """The pipeline names a component type that cannot be imported."""


class UnsafePipelineError(PipelineConfigError):
    """A pipeline file odqa refuses to load: a type outside the allowlist, YAML aliases, too big."""


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


# --- files and output directories ----------------------------------------------
class OutputExistsError(OdqaError):
    """An output path that exists and is not odqa's to replace (it would be overwritten or deleted)."""


class OutputLockedError(OdqaError):
    """Another running odqa process is writing the same output."""


class FileAccessError(OdqaError):
    """The operating system refused a read or write (permissions, disk full, a missing directory)."""


_OS_REASONS = {
    "EACCES": ("permission denied", "make it writable or choose a path you can write"),
    "EPERM": ("operation not permitted", "make it writable or choose a path you can write"),
    "EROFS": ("the file system is read-only", "choose a path on a writable disk"),
    "ENOSPC": ("no space left on the device", "free some disk space or choose a path on another disk"),
    "EDQUOT": ("disk quota exceeded", "free some space or choose a path on another disk"),
    "ENOENT": ("no such file or directory", "check the path, or create its parent directory"),
    "ENOTDIR": ("a part of the path is a file, not a directory", "check the path"),
    "EISDIR": ("it is a directory, not a file", "name a file"),
    "EEXIST": ("it already exists", "choose another path"),
    "ENAMETOOLONG": ("the path is too long", "choose a shorter path"),
}


def from_os_error(e: OSError, what: str | None = None, fix: str | None = None) -> FileAccessError:
    """A one-line :class:`FileAccessError` for an :class:`OSError`, naming the path and the fix.

    :param what: What the path is to odqa, e.g. ``"$ODQA_HOME, odqa's model cache"``.
    :param fix: What to do, in place of the generic advice for the error's cause.
    """
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    reason, generic = _OS_REASONS.get(name, (e.strerror or str(e) or type(e).__name__, "check the path"))
    fix = fix or generic
    about = f" ({what})" if what else ""
    if e.filename is None:  # no path to name (a socket, a pipe): say what failed
        return FileAccessError(f"an operating-system error{about}: {reason}; {fix}")
    target = f"'{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else "")
    return FileAccessError(f"cannot use {target}{about}: {reason}; {fix}")


def first_line(e: BaseException) -> str:
    """The first non-blank line of an error's message, or its type's name: a foreign library's
    error quoted inside one of odqa's one-line messages."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
