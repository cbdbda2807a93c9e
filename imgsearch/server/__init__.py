"""The resident search service: ``imgsearch serve``, its HTTP API and web gallery.

- ``service``: what the API does, framework-free (one collection and model, kept fresh);
- ``app``: the HTTP routes and ``serve`` (the only module importing FastAPI and uvicorn);
- ``thumbnails``: the thumbnail cache; ``discovery`` and ``client``: how the CLI finds and uses a server
  (standard library only, so that a query through a server never imports torch, numpy or the web stack).
"""
