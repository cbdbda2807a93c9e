"""imgsearch: semantic image search with CLIP, FAISS and SQLite.

    import imgsearch
    engine = imgsearch.open()                 # the default collection (see imgsearch.config.data_dir)
    engine.index_folder("~/Pictures")
    for hit in engine.search("a red car", k=5):
        print(hit.score, hit.path)
    engine.search("beach + sunset - people", filters=imgsearch.Filters(after="2023", formats="jpg"))
"""

from .api import Collection, open
from .config import IndexConfig, IndexingConfig, ModelConfig
from .errors import ImgsearchError
from .results import CollectionInfo, DuplicateGroup, DuplicateImage, ImageHit, IndexReport, SkippedFile, TextHit
from .search import Filters, Query, Term

__all__ = [
    "Collection", "open", "IndexConfig", "IndexingConfig", "ModelConfig", "ImgsearchError",
    "CollectionInfo", "ImageHit", "IndexReport", "SkippedFile", "TextHit", "Query", "Term", "Filters",
    "DuplicateGroup", "DuplicateImage",
]
__version__ = "0.1.0"
