"""imgsearch: semantic image search with CLIP, FAISS and SQLite.

import imgsearch
engine = imgsearch.open()                 # the default collection (see imgsearch.config.data_dir)
engine.index_folder("~/Pictures")
for hit in engine.search("a red car", k=5):
    print(hit.score, hit.path)
engine.search("beach + sunset - people", filters=imgsearch.Filters(after="2023", formats="jpg"))
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names below load on first use
    from .api import Collection, open
    from .config import IndexingConfig, ModelConfig, VectorIndexConfig
    from .errors import (
        BadInputError,
        CollectionDamagedError,
        CollectionError,
        CollectionNotFoundError,
        DatasetError,
        DiskFullError,
        EmptyCollectionError,
        ExportDamagedError,
        ImgsearchError,
        InvalidEmbeddingsError,
        ModelLoadError,
        ModelMismatchError,
        NotFoundError,
        TooLargeError,
        UnsupportedMediaError,
    )
    from .results import CollectionInfo, DuplicateGroup, DuplicateImage, ImageHit, IndexReport, SkippedFile, TextHit
    from .search import Filters, Query, Term

# Names load on first use (PEP 562): `import imgsearch` stays cheap, and so does the CLI's query through a server.
_HOMES = {
    "Collection": "api",
    "open": "api",
    "VectorIndexConfig": "config",
    "IndexingConfig": "config",
    "ModelConfig": "config",
    "ImgsearchError": "errors",
    "ModelLoadError": "errors",
    "ModelMismatchError": "errors",
    "CollectionNotFoundError": "errors",
    "CollectionError": "errors",
    "CollectionDamagedError": "errors",
    "EmptyCollectionError": "errors",
    "BadInputError": "errors",
    "DatasetError": "errors",
    "DiskFullError": "errors",
    "InvalidEmbeddingsError": "errors",
    "NotFoundError": "errors",
    "TooLargeError": "errors",
    "UnsupportedMediaError": "errors",
    "ExportDamagedError": "errors",
    "CollectionInfo": "results",
    "DuplicateGroup": "results",
    "DuplicateImage": "results",
    "ImageHit": "results",
    "IndexReport": "results",
    "SkippedFile": "results",
    "TextHit": "results",
    "Filters": "search",
    "Query": "search",
    "Term": "search",
}


# Renamed names: still found, with a warning, for one release (CHANGELOG.md).
_RENAMED = {"IndexConfig": "VectorIndexConfig"}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(
            f"imgsearch.{name} is now imgsearch.{_RENAMED[name]}; the old name goes in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return __getattr__(_RENAMED[name])
    if name == "__version__":  # one version, the package's own (pyproject.toml)
        from importlib.metadata import version

        return version("imgsearch")
    if name not in _HOMES:
        raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, "__version__"})


__all__ = [
    "Collection",
    "open",
    "VectorIndexConfig",
    "IndexingConfig",
    "ModelConfig",
    "ImgsearchError",
    "ModelLoadError",
    "ModelMismatchError",
    "CollectionNotFoundError",
    "CollectionError",
    "CollectionDamagedError",
    "EmptyCollectionError",
    "BadInputError",
    "DatasetError",
    "DiskFullError",
    "InvalidEmbeddingsError",
    "NotFoundError",
    "TooLargeError",
    "UnsupportedMediaError",
    "ExportDamagedError",
    "CollectionInfo",
    "ImageHit",
    "IndexReport",
    "SkippedFile",
    "TextHit",
    "Query",
    "Term",
    "Filters",
    "DuplicateGroup",
    "DuplicateImage",
]
