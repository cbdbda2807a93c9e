"""Stand-ins for Hugging Face files that cannot be downloaded here: real files written by the real libraries into a
real Hugging Face cache layout, so that open_clip, transformers and imgsearch load them through their own code.

- a tokenizer trained with the ``tokenizers`` package on real captions (``tokenizer.json``), with the
  ``tokenizer_config.json`` transformers reads beside it;
- for models whose text tower comes from the hub (xlm-roberta, nllb), a small ``config.json`` of that architecture
  made by transformers' own config class.
Nothing is mocked: a stand-in differs from the published files only in its vocabulary and size.
"""

from __future__ import annotations

import json
from pathlib import Path

_REVISION = "0" * 40


def snapshot(hf_home: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the cache under ``hf_home`` (``$HF_HOME``), created with its ref."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(_REVISION)
    files = folder / "snapshots" / _REVISION
    files.mkdir(parents=True, exist_ok=True)
    return files


def tokenizer(
    hf_home: Path,
    repo: str,
    texts: list[str],
    specials=("<pad>", "</s>", "<unk>"),
    pad: str = "<pad>",
    end: str = "</s>",
    unk: str = "<unk>",
    bos: str | None = None,
    vocab_size: int = 1000,
) -> Path:
    """A BPE tokenizer trained on ``texts``, its ``specials`` first (ids 0, 1, ...), ending every text with ``end``
    (and starting it with ``bos``), saved as ``repo`` in the cache under ``hf_home``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False)
    )
    added = [t for t in (bos, end) if t]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {end}" if bos else f"$A {end}", special_tokens=[(t, tok.token_to_id(t)) for t in added]
    )
    files = snapshot(hf_home, repo)
    tok.save(str(files / "tokenizer.json"))
    named = {
        "pad_token": pad,
        "eos_token": end,
        "unk_token": unk,
        **({"bos_token": bos, "cls_token": bos, "sep_token": end} if bos else {}),
    }
    (files / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **named})
    )
    (files / "special_tokens_map.json").write_text(json.dumps(named))
    (files / "config.json").write_text("{}")  # transformers 5 reads a model config before the tokenizer's
    return files


def xlm_roberta(hf_home: Path, repo: str, texts: list[str]) -> Path:
    """XLM-RoBERTa's conventions (<s> 0, <pad> 1, </s> 2, <unk> 3; "<s> text </s>") and a two-layer config."""
    from transformers import XLMRobertaConfig

    files = tokenizer(hf_home, repo, texts, specials=("<s>", "<pad>", "</s>", "<unk>"), bos="<s>")
    XLMRobertaConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(str(files))
    return files
