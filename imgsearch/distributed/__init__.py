"""Running imgsearch's work on a distributed engine (Ray); optional: ``pip install 'imgsearch[ray]'``."""
