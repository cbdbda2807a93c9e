"""imgsearch: semantic image search with CLIP, FAISS and SQLite.

    import imgsearch
    engine = imgsearch.open()                 # the default collection (see imgsearch.config.data_dir)
    engine.index_folder("~/Pictures")
    for hit in engine.search("a red car", k=5):
        print(hit.score, hit.path)
    engine.search("beach + sunset - people", filters=imgsearch.Filters(after="2023", formats="jpg"))
"""

from importlib import import_module

# Names load on first use (PEP 562): `import imgsearch` stays cheap, and so does the CLI's query through a server.
_HOMES = {
    "Collection": "api", "open": "api", "IndexConfig": "config", "IndexingConfig": "config", "ModelConfig": "config",
    "ImgsearchError": "errors", "CollectionInfo": "results", "DuplicateGroup": "results", "DuplicateImage": "results",
    "ImageHit": "results", "IndexReport": "results", "SkippedFile": "results", "TextHit": "results",
    "Filters": "search", "Query": "search", "Term": "search",
}


def __getattr__(name: str):
    if name == "__version__":  # one version, the package's own (pyproject.toml)
        from importlib.metadata import version

        return version("imgsearch")
    if name not in _HOMES:
        raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Collection", "open", "IndexConfig", "IndexingConfig", "ModelConfig", "ImgsearchError",
    "CollectionInfo", "ImageHit", "IndexReport", "SkippedFile", "TextHit", "Query", "Term", "Filters",
    "DuplicateGroup", "DuplicateImage",
]
