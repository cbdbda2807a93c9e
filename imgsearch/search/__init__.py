"""Search power: the query model (weighted text/image terms), metadata filters, near-duplicate groups."""

from .filters import Filters
from .query import Query, Term

__all__ = ["Filters", "Query", "Term"]
