"""Exceptions raised by the imgsearch library.

The library never prints or exits; the CLI turns these into one-line messages
and a non-zero exit code. Every message says what was wrong and how to fix it.
"""


class ImgsearchError(Exception):
    """Base class for every error a user can cause.

    ``cli_hint`` / ``api_hint`` / ``web_hint``: how to fix it, in the words of the command line, of Python and of
    the web gallery; str(exc) carries the API's, the CLI prints ``for_cli()`` and the gallery ``for_web()``. Without
    its own hint, a wording is the neutral facts of the message alone.
    """

    def __init__(
        self, message: str, *, cli_hint: str | None = None, api_hint: str | None = None, web_hint: str | None = None
    ):
        super().__init__(f"{message}; {api_hint}" if api_hint else message)
        self.message = message
        self.cli_text = f"{message}; {cli_hint}" if cli_hint else str(self)
        self.web_text = f"{message}; {web_hint}" if web_hint else message

    def for_cli(self) -> str:
        return getattr(self, "cli_text", str(self))

    def for_web(self) -> str:
        return getattr(self, "web_text", getattr(self, "message", str(self)))


class ModelLoadError(ImgsearchError):
    """The CLIP model could not be created or its weights could not be loaded."""


class ModelMismatchError(ImgsearchError):
    """A collection was built with one model and is used with another."""


class CollectionNotFoundError(ImgsearchError):
    """No collection exists at the given path."""


class CollectionError(ImgsearchError):
    """A collection on disk is unusable (newer schema, damaged files...)."""


class CollectionDamagedError(CollectionError):
    """A collection's own database is damaged: rows it should hold are missing or unreadable."""


class EmptyCollectionError(ImgsearchError):
    """A search was asked of a collection that holds nothing to search."""


class BadInputError(ImgsearchError):
    """An argument or input file given by the user is invalid."""


class NothingToIndexError(BadInputError):
    """A folder to index holds no image file, and the collection knew none under it (a mistyped folder, or one a
    watcher follows before its first photo arrives)."""


class DatasetError(ImgsearchError):
    """An evaluation dataset is missing, incomplete, or in an unknown format."""


class DiskFullError(ImgsearchError):
    """A write failed for lack of space (or a disk error); what was saved before is intact."""


class InvalidEmbeddingsError(ImgsearchError):
    """A model produced NaN or inf vectors, which no metric can rank."""


class NotFoundError(BadInputError):
    """Something asked for by id (an image, a file) does not exist, or no longer does."""


class TooLargeError(BadInputError):
    """An upload is over the size limit."""


class UnsupportedMediaError(BadInputError):
    """An upload is not declared as an image."""


class ExportDamagedError(ImgsearchError):
    """A cached export of a model failed its check at load (a truncated or altered file): it has been removed, and
    is made again by the next run that loads the model in torch."""


def first_sentence(exc: BaseException) -> str:
    """An exception as one short line for a message: its type and the first sentence of its text."""
    text = str(exc).split(". ")[0].strip().rstrip(".")
    return f"{type(exc).__name__}: {text[:240]}"
