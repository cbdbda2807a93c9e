"""Exporting a model's towers to ONNX once, and checking every exported path against torch fp32 before any is used.

The export is made from the fp32 weights of a model in eval mode, and leaves the model as it found it:
``torch.onnx.export`` restores the *wrapper's* training flag, and a fresh ``nn.Module`` starts in training mode,
which once put every module of the model into training mode after an export (BatchNorm then normalised each batch
by its own statistics: the same image gave cosine 0.86 alone against inside a batch of four). The export is checked
against the model in eval mode on fixed probe images and texts: ONNX Runtime fp32 and OpenVINO's run of the image
tower, and torch with bf16 weights where ``auto`` could run it, each recorded in ``meta.json`` (``encoders.py``
reads them). Only what ``auto`` may run is made: the int8 image tower, which it never runs, is made on first use of
``--backend onnx-int8`` (``inference/onnx.with_int8``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import open_clip
import torch

from ..config import ModelConfig
from ..inference import backends, probes
from .models import ClipModel, Loaded, first_sentence, preprocess_cfg


def normalised(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


@contextlib.contextmanager
def training_flags_kept(model: torch.nn.Module) -> Iterator[None]:
    """Every module's training flag as it was on entry, whatever happens inside (an export sets them)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class _Tower(torch.nn.Module):
    def __init__(self, model: ClipModel, text: bool):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x) if self.text else self.model.encode_image(x)


def export(loaded: Loaded, config: ModelConfig, pixels: torch.Tensor, tokens: torch.Tensor, stage=lambda name: None):
    """Export both towers to ONNX in a private folder, check them against torch fp32, then publish the folder.
    ``stage`` is told each step as it starts (a first run shows them: they take a minute on a slow machine).

    Concurrent exporters each write their own folder; the first rename wins and the others are discarded.
    """
    from ..inference.onnx import OnnxTowers

    final = backends.export_folder(config)
    work = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    backends.remove_dead_work(final.parent)
    try:
        stage("exporting the model for the CPU (once per model)")
        meta = _meta(loaded, config, work)
        trimmable = _trimmable(loaded.model, meta["tokenizer"])
        _write_towers(loaded.model, work, pixels, tokens, trimmable)
        written = sum(f.stat().st_size for f in work.iterdir() if f.is_file())
        stage(f"checking the export ({written / 1e6:.0f} MB, once per model)")
        staged = backends.OnnxExport(work, meta)
        towers = OnnxTowers(staged, verify=False)  # every core: the checks run once per model
        if trimmable and _trims_alike(towers, tokens.numpy()):
            meta["text_trim"] = True  # the same dict: from here the towers cut their texts
        with torch.inference_mode():
            reference = normalised(loaded.model.encode_image(pixels)), normalised(loaded.model.encode_text(tokens))
        check = {
            "onnx": probes.judge(
                *reference, towers.encode_image(pixels.numpy()), towers.encode_text(tokens.numpy())
            ).to_dict(),
            "openvino": _openvino_check(staged, pixels.numpy(), reference),
        }
        if not check["openvino"].get("passed"):  # else auto runs OpenVINO and never torch bf16 (encoders.py)
            check["torch-bf16"] = _bf16_check(loaded.model, pixels, tokens, reference)
        backends.write_meta(
            work,
            {
                **meta,
                "check": {k: v for k, v in check.items() if v},
                "probes": {
                    "image": reference[0].tolist(),
                    "text": reference[1].tolist(),
                    "tokens": tokens.numpy().tolist(),
                },
            },
        )
        if final.exists() and backends.find_export(config) is None:
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover (folders are published whole)
        try:
            os.rename(work, final)
        except OSError:  # another process published first
            shutil.rmtree(work, ignore_errors=True)
        backends.remove_stale_exports()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return backends.find_export(config)


class _TrimmableText(torch.nn.Module):
    """open_clip's ``CLIP.encode_text`` over tokens of any length up to the context (its own adds the whole
    positional embedding and causal mask, so it takes full-length tokens only): the same operations, with both cut
    to the input's length. Exported only for towers where cutting changes nothing (``_trimmable``)."""

    def __init__(self, model: ClipModel):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        m = self.model
        at = torch.arange(text.shape[1], device=text.device)  # indices, not a slice: traced with the input's length
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast) + m.positional_embedding[at].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[at][:, at]))
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x


class _AnyLengthAttention(torch.nn.Module):
    """``nn.MultiheadAttention``'s computation (batch first, one in-projection, no added keys), traced with the
    input's length: torch's own checks a 2D mask against the query's shape in Python, which the ONNX tracer then
    fixes at the traced length. Put in place of a text block's ``attn`` while the tower is traced, and only then."""

    def __init__(self, attention: torch.nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, q, k, v, need_weights: bool = False, attn_mask: torch.Tensor | None = None):
        a = self.attention
        n, length, width = q.shape
        heads = a.num_heads
        qkv = torch.nn.functional.linear(q, a.in_proj_weight, a.in_proj_bias)
        query, key, value = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        return a.out_proj(out.transpose(1, 2).reshape(n, length, width)), None


def _attention_blocks(model: ClipModel) -> list | None:
    """The text transformer's blocks, if each attends through a plain ``nn.MultiheadAttention`` (batch first, one
    in-projection, no added key or value biases) that ``_AnyLengthAttention`` computes alike; else None."""
    blocks = list(getattr(getattr(model, "transformer", None), "resblocks", []))
    for block in blocks:
        a = getattr(block, "attn", None)
        if not (
            isinstance(a, torch.nn.MultiheadAttention)
            and a.batch_first
            and a._qkv_same_embed_dim
            and a.bias_k is None
            and not a.add_zero_attn
            and type(block).attention is open_clip.transformer.ResidualAttentionBlock.attention
        ):
            return None
    return blocks or None


@contextlib.contextmanager
def _any_length_attention(model: ClipModel) -> Iterator[None]:
    blocks = _attention_blocks(model) or []
    kept = [block.attn for block in blocks]
    try:
        for block in blocks:
            block.attn = _AnyLengthAttention(block.attn)
        yield
    finally:
        for block, attention in zip(blocks, kept):
            block.attn = attention


def _trimmable(model: ClipModel, tokenizer: str) -> bool:
    """Whether a text's vector depends only on its tokens up to its end token, so that a batch of tokens may be cut
    after its longest text (a caption is ~15 of CLIP's 77 tokens: a fifth of the work): open_clip's CLIP class
    (whose ``encode_text`` ``_TrimmableText`` follows), a causal mask (no position sees a later one), pooled at the
    end token (argmax: CLIP's end token has the highest id), and CLIP's BPE (zeros after the end token)."""
    return (
        type(model) is open_clip.CLIP
        and _attention_blocks(model) is not None
        and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
        and getattr(model, "text_pool_type", None) == "argmax"
        and tokenizer == "clip-bpe"
    )


def _trims_alike(towers, tokens: np.ndarray) -> bool:
    """Whether the exported text tower gives the probe texts the same vectors cut after the longest as at full
    length (``inference/onnx.trimmed``); the export is marked ``text_trim`` only then. ``towers``: the export's,
    not yet marked (tokens run as given)."""
    from ..inference.onnx import trimmed

    try:
        full, cut = towers.encode_text(tokens), towers.encode_text(trimmed(tokens))
    except Exception:  # noqa: BLE001 - a graph that cannot take another length: full length, as before
        return False
    return probes.min_cosine(full, cut) >= probes.TRIM_COSINE


def _write_towers(model: ClipModel, folder, pixels: torch.Tensor, tokens: torch.Tensor, trimmable: bool) -> None:
    from ..inference.onnx import externalise

    # Grad mode on: under no_grad, MultiheadAttention takes a fused fast path that ONNX cannot express. The towers
    # are traced in eval mode, and every module's flag is restored afterwards (see the module docstring).
    with torch.enable_grad(), warnings.catch_warnings(), training_flags_kept(model):
        warnings.simplefilter("ignore")
        model.eval()
        for text, sample, name in ((True, tokens, "text"), (False, pixels, "image")):
            any_length = text and trimmable
            tower = (_TrimmableText(model) if any_length else _Tower(model, text)).eval()
            axes = {0: "n", 1: "length"} if any_length else {0: "n"}
            with _any_length_attention(model) if any_length else contextlib.nullcontext():
                torch.onnx.export(
                    tower,
                    (sample[:2],),
                    str(folder / f"{name}.onnx"),
                    input_names=["tokens" if text else "pixels"],
                    output_names=["features"],
                    dynamic_axes={"tokens" if text else "pixels": axes, "features": {0: "n"}},
                    opset_version=17,
                    dynamo=False,
                )
            externalise(folder / f"{name}.onnx")


def _openvino_check(staged, pixels: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> dict:
    """Run the image tower in OpenVINO, when installed, and judge it against torch fp32."""
    if not backends.openvino_installed():
        return {}
    from ..inference.openvino import OpenVinoImageTower

    try:
        tower = OpenVinoImageTower(staged, verify=False)
        images = tower.encode_image(pixels)
    except Exception as exc:  # an op OpenVINO cannot compile: the other paths still work
        return {"passed": False, "error": first_sentence(exc)}
    return {**probes.judge(*reference, images, reference[1]).to_dict(), "precision": tower.precision}


def _bf16_check(
    model: ClipModel, pixels: torch.Tensor, tokens: torch.Tensor, reference: tuple[np.ndarray, np.ndarray]
) -> dict:
    """Judge torch with bf16 weights on this CPU, so that later runs choose between it and the export without
    building the model (encoders.for_files)."""
    import copy

    if not backends.native_bf16():
        return {}
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        images = normalised(half.encode_image(pixels.to(torch.bfloat16)))
        texts = normalised(half.encode_text(tokens))
    return probes.judge(*reference, images, texts).to_dict()


def _meta(loaded: Loaded, config: ModelConfig, folder) -> dict:
    cfg = preprocess_cfg(loaded.model)
    return {
        "model": config.name,
        "pretrained": config.pretrained,
        "pretrained_as": config.pretrained_as,
        "dim": _dim(loaded),
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "recipe": loaded.recipe.to_dict(),
        **tokenizer_meta(loaded.tokenizer, folder),
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", ""),
    }


def _dim(loaded: Loaded) -> int:
    with torch.inference_mode():
        return int(loaded.model.encode_text(loaded.tokenizer(["a"])).shape[-1])


def tokenizer_meta(tokenizer, folder) -> dict:
    """How the torch-free query path tokenizes like ``tokenizer``: CLIP's BPE (inference/tokenizer.py), or a Hugging
    Face tokenizer, whose ``tokenizer.json`` is saved into the export ``folder`` with the settings open_clip's
    wrapper applies (cleaning, padding, truncation, the separator it strips); else "open_clip" (torch only)."""
    length = int(getattr(tokenizer, "context_length", 77) or 77)
    if isinstance(tokenizer, open_clip.SimpleTokenizer):
        plain = tokenizer.reduction_fn is None and tokenizer.clean_fn.__name__ == "_clean_lower"
        return {"tokenizer": "clip-bpe" if plain else "open_clip", "context_length": length}
    hf = _hf_settings(tokenizer)
    if hf is None:
        return {"tokenizer": "open_clip", "context_length": length}
    tokenizer.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    return {"tokenizer": "hf", "context_length": length, "hf": hf}


def _hf_settings(tokenizer) -> dict | None:
    inner: Any = getattr(tokenizer, "tokenizer", None)  # a Hugging Face tokenizer, when it has a backend
    if not hasattr(inner, "backend_tokenizer") or getattr(tokenizer, "tokenizer_mode", "") not in ("", None):
        return None
    clean: str | None
    if isinstance(tokenizer, open_clip.tokenizer.SigLipTokenizer):
        clean = "siglip"
    else:
        clean = {"_clean_canonicalize": "canonicalize", "_clean_lower": "lower", "_clean_whitespace": "whitespace"}.get(
            getattr(tokenizer.clean_fn, "__name__", "")
        )
    if clean is None:
        return None
    return {
        "clean": clean,
        "pad_id": int(inner.pad_token_id),
        "pad_token": str(inner.pad_token),
        "padding_side": inner.padding_side,
        "truncation_side": inner.truncation_side,
        "strip_sep_id": int(inner.sep_token_id) if getattr(tokenizer, "strip_sep_token", False) else None,
    }
