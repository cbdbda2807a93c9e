"""Where a collection keeps its data: the SQLite store (the truth), the FAISS file kept in step with it, float16
rows for re-ranking, and the writer lock. Nothing here knows a model or a query."""
