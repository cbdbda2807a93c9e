"""The `imgsearch` command: parse, call one API method, format. The only part of imgsearch that prints or exits.

``common`` holds the apps, the shared options and helpers; each other module registers its commands on import, in the
order ``imgsearch --help`` lists them.
"""

from __future__ import annotations

# Each import registers its commands, in the order --help lists them.
from . import indexing  # noqa: F401  (index, skipped, prune, texts)

# isort: split
from . import searching  # noqa: F401  (query, serve, dupes)

# isort: split
from . import maintenance  # noqa: F401  (models, info, check, cache, eval)

# isort: split
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    import logging

    # Hub retries and "no pretrained weights" notices are noise here; failures still surface as errors.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    app()
