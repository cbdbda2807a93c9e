"""imgsearch: semantic image search with CLIP, FAISS and SQLite.

    import imgsearch
    engine = imgsearch.open("indexes/default")
    engine.index_folder("~/Pictures")
    for hit in engine.search("a red car", k=5):
        print(hit.score, hit.path)
"""

from .api import Collection, open
from .config import IndexConfig, IndexingConfig, ModelConfig
from .errors import ImgsearchError
from .results import CollectionInfo, ImageHit, IndexReport, SkippedFile, TextHit

__all__ = [
    "Collection", "open", "IndexConfig", "IndexingConfig", "ModelConfig", "ImgsearchError",
    "CollectionInfo", "ImageHit", "IndexReport", "SkippedFile", "TextHit",
]
__version__ = "0.1.0"
