"""Exceptions raised by the imgsearch library.

The library never prints or exits; the CLI turns these into one-line messages
and a non-zero exit code. Every message says what was wrong and how to fix it.
"""


class ImgsearchError(Exception):
    """Base class for every error a user can cause."""


class ModelLoadError(ImgsearchError):
    """The CLIP model could not be created or its weights could not be loaded."""


class ModelMismatchError(ImgsearchError):
    """A collection was built with one model and is used with another."""


class CollectionNotFoundError(ImgsearchError):
    """No collection exists at the given path."""


class CollectionError(ImgsearchError):
    """A collection on disk is unusable (newer schema, damaged files...)."""


class EmptyCollectionError(ImgsearchError):
    """A search was asked of a collection that holds nothing to search."""


class BadInputError(ImgsearchError):
    """An argument or input file given by the user is invalid."""


class DatasetError(ImgsearchError):
    """An evaluation dataset is missing, incomplete, or in an unknown format."""
