"""CLIP's byte-level BPE tokenizer without torch: the same token ids as ``open_clip.SimpleTokenizer``.

A text query in a fresh process must not pay for importing torch (seconds) just to turn words into ids.
The vocabulary is open_clip's own file, read from the installed package without importing it.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import os
import re
import string
import zlib

import numpy as np

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # merges open_clip reads from the file
_SPECIAL = ("<start_of_text>", "<end_of_text>")
_NO_RANK = _MERGES  # above every real rank
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")  # printable ASCII but "&", and whitespace


def vocab_path() -> str:
    spec = importlib.util.find_spec("open_clip")  # locates the package; runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; its BPE vocabulary is needed to tokenize")
    return os.path.join(list(spec.submodule_search_locations)[0], _VOCAB_FILE)


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """Each byte as a printable character: printable Latin-1 bytes stand for themselves, the rest are shifted."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(kept)]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(others)}}


class ClipTokenizer:
    """text -> int64 ids of shape (n, context_length): start, BPE ids, end, zero padding; truncated keeping the end."""

    def __init__(self, context_length: int = 77, path: str | None = None):
        import regex  # open_clip's dependency: \p{L} classes

        # Token ids follow open_clip's vocabulary: 256 byte symbols, the same with "</w>", then one token per
        # merge in rank order (none repeats), then the two specials. Only the merges are read (a dict of
        # "a b" lines, ~35 ms); a merged token's id is 512 + its merge's rank.
        with open(path or vocab_path(), "rb") as f:
            text = zlib.decompress(f.read(), 16 + zlib.MAX_WBITS).decode("utf-8")
        self._ranks = dict(zip(text.split("\n", _MERGES + 1)[1 : _MERGES + 1], range(_MERGES)))
        self._bytes = _byte_symbols()
        self._ids = {symbol: i for i, symbol in enumerate(self._bytes.values())}
        self._ids.update({symbol + "</w>": i + 256 for i, symbol in enumerate(self._bytes.values())})
        self._ids.update({name: 512 + _MERGES + i for i, name in enumerate(_SPECIAL)})
        self._words: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self.context_length = context_length
        self.start, self.end = self._ids[_SPECIAL[0]], self._ids[_SPECIAL[1]]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._pattern.findall(_clean(text)):
            symbols = "".join(self._bytes[b] for b in word.encode("utf-8"))
            ids.extend(self._word_ids(symbols))
        return ids

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start, *self.encode(text), self.end]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end
            out[row, : len(ids)] = ids
        return out

    def _word_ids(self, word: str) -> list[int]:
        if word in _SPECIAL:
            return [self._ids[word]]
        if word not in self._words:
            self._words[word] = [self._ids[part] for part in self._merge(word)]
        return self._words[word]

    def _merge(self, word: str) -> list[str]:
        """Apply the lowest-ranked merge until none applies; the last symbol carries the end-of-word mark."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self._ranks.get(f"{a} {b}", _NO_RANK), a, b) for a, b in zip(parts, parts[1:])]
            rank, a, b = min(ranked)
            if rank == _NO_RANK:
                break
            self._ids[a + b] = 512 + rank
            parts = _join_pair(parts, (a, b))
        return parts


def _join_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
    joined, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            joined.append(parts[i] + parts[i + 1])
            i += 2
        else:
            joined.append(parts[i])
            i += 1
    return joined


def _clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lower case."""
    return " ".join(basic_clean(text).split()).lower()


def basic_clean(text: str) -> str:
    """open_clip's ``basic_clean``: ftfy, HTML unescaped twice, stripped.

    ftfy (70 ms to import) changes no text made of printable ASCII, whitespace and no "&" (it has no mojibake,
    no entity, no control character to fix), so such text, nearly every query, skips it."""
    if not _PLAIN.fullmatch(text):
        import ftfy  # open_clip's dependency

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CLEANERS = {
    "whitespace": lambda t: " ".join(basic_clean(t).split()),
    "lower": _clean,
    # open_clip's canonicalize_text (big_vision's): underscores to spaces, punctuation dropped, lower case
    "canonicalize": lambda t: " ".join(basic_clean(t).replace("_", " ").translate(_PUNCTUATION).lower().split()),
}
_CLEANERS["siglip"] = _CLEANERS["canonicalize"]


class HfTokenizer:
    """A Hugging Face tokenizer as open_clip's wrapper runs it (``HFTokenizer``, ``SigLipTokenizer``), from the
    ``tokenizer.json`` an export saved, with the ``tokenizers`` package (Rust, no torch, no transformers): the
    wrapper's cleaning, truncation and padding to ``context_length``, and the separator it strips."""

    def __init__(self, path: str, context_length: int, settings: dict):
        from tokenizers import Tokenizer

        self.context_length, self.settings = context_length, settings
        self._clean = _CLEANERS[settings["clean"]]
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=context_length, direction=settings.get("truncation_side", "right"))
        self._tokenizer.enable_padding(
            direction=settings.get("padding_side", "right"),
            pad_id=settings["pad_id"],
            pad_token=settings["pad_token"],
            length=context_length,
        )

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self._tokenizer.encode_batch([self._clean(t) for t in texts])
        ids = np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), self.context_length)
        strip = self.settings.get("strip_sep_id")
        if strip is not None:
            ids[ids == strip] = 0
        return ids


def for_export(meta: dict, folder) -> ClipTokenizer | HfTokenizer:
    """The torch-free tokenizer an export's meta describes (``encoders.for_query`` checks that there is one)."""
    length = meta.get("context_length", 77)
    if meta.get("tokenizer") == "hf":
        return HfTokenizer(os.path.join(folder, "tokenizer.json"), length, meta["hf"])
    return ClipTokenizer(length)
