"""The query model: weighted text and image terms plus filters, and the parser for its written form.

One model for the CLI, the Python API and HTTP. The combined query vector is the weighted sum of the
L2-normalised term embeddings, renormalised (rclip's rule), so ``"beach + sunset - people"`` means
``normalise(e(beach) + e(sunset) - e(people))``.

Written form (``Query.parse``):

- terms are joined by ``+`` or ``-`` standing alone between spaces: ``beach + sunset - people``;
  a hyphen inside a word (``t-shirt``) is part of the word;
- ``2*red car`` weights a term (any positive number, ``0.5*night``); rclip's ``2:red car`` means the same;
- ``img:PATH`` (or ``img:URL``) is an image term, ``id:N`` an indexed image, ``text:...`` literal text;
- double quotes keep operators and prefixes literal: ``"rock + roll" - guitar``, ``img:"my + photo.jpg"``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadInputError
from .filters import Filters

PREFIXES = ("img", "id", "text")
MAX_TERMS = 32  # each term is one encoder pass: a 2,000-term query cost a server 1.1 s
MAX_WEIGHT = 1000.0  # beyond it a weight means nothing more (the sum is renormalised), and 1e308 overflows
MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id names nothing
_TOKENS = re.compile(r'"(?P<quoted>[^"]*)"|(?P<unclosed>")|(?<!\S)(?P<op>[+-])(?!\S)|(?P<plain>[^"\s]+|\s+)')
_WEIGHT = re.compile(r"^\s*(?P<w>\d+(?:\.\d*)?|\.\d+)\s*\*\s*")
# rclip's form of a weight, "2:cat": a number and a colon before a word (so "10:30 meeting" stays text).
_RCLIP_WEIGHT = re.compile(r"^\s*(?P<w>\d+(?:\.\d*)?|\.\d+):(?=[^\d\s:])")
_PREFIX = re.compile(r"^\s*(?P<p>[A-Za-z][A-Za-z0-9_-]*):(?=\S|$)")


@dataclass(frozen=True)
class Term:
    """One part of a query. ``kind``: "text", "image" (a path, URL or PIL image) or "id" (an indexed image)."""

    kind: str
    value: Any
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image", "id"):
            raise BadInputError(f"unknown term kind {self.kind!r}; use text, image or id")
        if not math.isfinite(self.weight) or self.weight == 0 or abs(self.weight) > MAX_WEIGHT:
            raise BadInputError(f"term weight must be a non-zero number of at most {MAX_WEIGHT:g}, got {self.weight:g}")
        if self.kind == "id" and not 0 < self.value <= MAX_ID:
            raise BadInputError(f"id:{self.value} is not an image id; ids are whole numbers from 1 to {MAX_ID}")
        if self.kind == "text" and not str(self.value).strip():
            raise BadInputError("empty query text; give some words (or leave the term out)")

    @classmethod
    def text(cls, words: str, weight: float = 1.0) -> Term:
        return cls("text", words.strip(), weight)

    @classmethod
    def image(cls, source, weight: float = 1.0) -> Term:
        return cls("image", source, weight)

    @classmethod
    def indexed(cls, image_id: int, weight: float = 1.0) -> Term:
        return cls("id", int(image_id), weight)

    def __str__(self) -> str:
        sign = "-" if self.weight < 0 else "+"
        weight = "" if abs(self.weight) == 1 else f"{abs(self.weight):g}*"
        value = {
            "text": lambda v: f'"{v}"' if re.search(r"\s[+-]\s|^\w+:", v) else v,
            "image": lambda v: f"img:{v}" if isinstance(v, (str, os.PathLike)) else "img:<image>",
            "id": lambda v: f"id:{v}",
        }[self.kind](self.value)
        return f"{sign} {weight}{value}"


@dataclass(frozen=True)
class Query:
    """What to look for (terms) and where (filters). ``Query.parse`` reads the written form."""

    terms: tuple[Term, ...] = ()
    filters: Filters = field(default_factory=Filters)

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        if not self.terms:
            raise BadInputError("empty query; give some text, an image, or both")
        if not any(t.weight > 0 for t in self.terms):
            raise BadInputError("a query needs at least one term to look for, not only terms to subtract")
        if len(self.terms) > MAX_TERMS:
            raise BadInputError(f"the query has {len(self.terms)} terms; at most {MAX_TERMS} are combined")

    @classmethod
    def parse(cls, text: str, filters: Filters | None = None, bare_images: bool = False) -> Query:
        """Parse the written form. ``bare_images``: a bare term that looks like an image file name
        (``beach.jpg``, ``photos/a b.png``) is an image term (the API's rule); otherwise it is refused with
        a pointer to ``img:`` (the CLI's rule, so a mistyped path never becomes a text search)."""
        return cls(tuple(_parse_terms(text, bare_images)), filters or Filters())

    @classmethod
    def of(cls, *terms: Term, filters: Filters | None = None) -> Query:
        return cls(terms, filters or Filters())

    def with_filters(self, filters: Filters) -> Query:
        return Query(self.terms, filters)

    def __str__(self) -> str:
        return " ".join(str(t) for t in self.terms).removeprefix("+ ")


def _parse_terms(text: str, bare_images: bool) -> list[Term]:
    if not text or not text.strip():
        raise BadInputError("empty query; give some text, an image, or both")
    terms: list[Term] = []
    pieces: list[tuple[bool, str]] = []
    sign, op = 1.0, None
    for match in _TOKENS.finditer(text):
        kind = match.lastgroup or ""
        if kind == "unclosed":
            raise BadInputError(f'unclosed quote in query {text!r}; close it with another "')
        if kind == "op":
            if pieces or terms or op is not None:
                _finish(terms, pieces, sign, op, text, bare_images)
            pieces, sign, op = [], (1.0 if match["op"] == "+" else -1.0), match["op"]
        else:
            pieces.append((kind == "quoted", match[kind]))
    _finish(terms, pieces, sign, op, text, bare_images)
    return terms


def _finish(terms: list, pieces: list, sign: float, op: str | None, text: str, bare_images: bool) -> None:
    if not "".join(p for _, p in pieces).strip():
        where = f"after '{op}'" if op else "at the start"
        raise BadInputError(f"empty term {where} in query {text!r}; remove the extra operator or add a term")
    terms.append(_term(pieces, sign, bare_images))


def _term(pieces: list[tuple[bool, str]], sign: float, bare_images: bool) -> Term:
    pieces = _merged(pieces)
    weight, pieces = _leading(_WEIGHT, pieces)
    if weight is None:
        weight, pieces = _leading(_RCLIP_WEIGHT, pieces)
    prefix, pieces = _leading(_PREFIX, pieces)
    value = "".join(p for _, p in pieces).strip()
    quoted = any(q for q, _ in pieces)
    w = sign * (float(weight) if weight is not None else 1.0)
    if weight is not None and float(weight) == 0:
        raise BadInputError(f"weight 0 in '{weight}*{value}' does nothing; leave the term out")
    if prefix is None or prefix.lower() in ("http", "https"):  # a URL is a bare term, whose form says "image"
        return _bare(f"{prefix}:{value}" if prefix else value, quoted, w, bare_images)
    return _prefixed(prefix.lower(), value, w)


def _merged(pieces: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    """Adjacent unquoted pieces joined, so that a prefix is read from the whole unquoted text."""
    out: list[tuple[bool, str]] = []
    for quoted, text in pieces:
        if out and not quoted and not out[-1][0]:
            out[-1] = (False, out[-1][1] + text)
        else:
            out.append((quoted, text))
    return out


def _leading(pattern: re.Pattern, pieces: list[tuple[bool, str]]) -> tuple[str | None, list]:
    """A weight or prefix at the start of the term's first unquoted text; the pieces after it."""
    rest = list(pieces)
    while rest and not rest[0][0] and not rest[0][1].strip():
        rest.pop(0)
    if not rest or rest[0][0]:
        return None, pieces
    match = pattern.match(rest[0][1])
    if match is None:
        return None, pieces
    remainder = rest[0][1][match.end() :]
    return match.group(1), ([(False, remainder)] if remainder else []) + rest[1:]


def _bare(value: str, quoted: bool, weight: float, bare_images: bool) -> Term:
    from ..images import looks_like_image_path

    if not quoted and looks_like_image_path(value):
        if bare_images:
            return Term.image(value, weight)
        raise BadInputError(
            f"{value!r} looks like an image file name",
            cli_hint=f"to search with the image write img:{value} or --image {value}; to search for the words, quote "
            f'them ("{value}")',
            api_hint=f"to search with the image write img:{value} or pass it as Term.image; to search for the words, "
            f'quote them ("{value}")',
            web_hint=f"to search with an image, drop it on the page or choose it with the image button; to search for "
            f'the words, quote them ("{value}")',
        )
    return Term.text(value, weight)


def _prefixed(prefix: str, value: str, weight: float) -> Term:
    if prefix not in PREFIXES:
        raise BadInputError(
            f"unknown prefix '{prefix}:' in term '{prefix}:{value}'; known prefixes: "
            f'{", ".join(p + ":" for p in PREFIXES)}; quote the term ("{prefix}:{value}") to search for it as text'
        )
    if prefix == "text":
        return Term.text(value, weight)
    if not value:
        raise BadInputError(f"'{prefix}:' needs a value, e.g. {prefix}:{'photos/a.jpg' if prefix == 'img' else '42'}")
    if prefix == "img":
        return Term.image(value, weight)
    if prefix == "id":
        if not re.fullmatch(r"\d+", value):
            raise BadInputError(
                f"id:{value} is not an image id; ids are whole numbers", cli_hint="search results show them with --json"
            )
        return Term.indexed(int(value), weight)
    raise AssertionError(f"prefix {prefix!r} is in PREFIXES but has no case here")


def combine(vectors, weights) -> np.ndarray:
    """The query vector: normalise(sum of weight * term vector). Term vectors come from the encoders or the
    store, which hold every vector L2-normalised (the one convention, enforced where vectors are made).
    Refuses terms that cancel out."""
    total = np.asarray(weights, np.float64) @ np.asarray(vectors, np.float64)
    length = float(np.linalg.norm(total))
    if not math.isfinite(length):
        raise BadInputError("the query's weighted sum is not a number; give smaller weights")
    if length < 1e-4:
        raise BadInputError(
            "the query's terms cancel each other out (their weighted sum is zero); remove or reweight a subtracted term"
        )
    return (total / length).astype(np.float32)
