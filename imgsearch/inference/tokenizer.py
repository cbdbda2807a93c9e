"""CLIP's byte-level BPE tokenizer without torch: the same token ids as ``open_clip.SimpleTokenizer``.

A text query in a fresh process must not pay for importing torch (seconds) just to turn words into ids.
The vocabulary is open_clip's own file, read from the installed package without importing it.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os

import numpy as np

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # merges open_clip reads from the file
_SPECIAL = ("<start_of_text>", "<end_of_text>")


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

        lines = gzip.open(path or vocab_path()).read().decode("utf-8").split("\n")[1 : _MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_symbols = list(_byte_symbols().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + list(_SPECIAL)
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._ranks = {pair: i for i, pair in enumerate(merges)}
        self._bytes = _byte_symbols()
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
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            parts = _join_pair(parts, best)
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
    import ftfy  # open_clip's dependency

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()
