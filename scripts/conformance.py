"""Model conformance: every open_clip family gives the same vectors on every backend ``auto`` may choose.

For the smallest model of each family, with seeded random weights (the real architecture and code path; no
pretrained weights can be downloaded here) and the recipe of one of its published tags (``pretrained_as``), on real
photos and captions from ../shared/data:
- agreement with torch fp32 in eval mode of every backend auto may choose (OpenVINO bf16, and its int8 tower on
  CPUs with VNNI where it passed its check, torch bf16, ONNX Runtime fp32, the torch-free query encoder): the smallest cosine over photos and captions, and the top-10 overlap of the
  caption -> photo rankings;
- batch invariance: a photo alone and inside a batch of eight (smallest cosine, every backend);
- the torch-free preprocessing against open_clip's own transform, and the torch-free tokenizer against open_clip's
  tokenizer on the captions and non-English text;
- a first index run (which exports the model) against a later query in a fresh collection handle;
- the cold text query, as a whole process, relative to ViT-B-32's (``--cold``).
Hugging Face tokenizers and text towers come from stand-ins in a Hugging Face cache layout (tests/standins.py).

    .venv/bin/python scripts/conformance.py                # every family, the table in Markdown
    .venv/bin/python scripts/conformance.py RN50 --cold     # one family, with cold query times
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

OTHER_LANGUAGES = [
    "Un chien qui court sur la plage",
    "Ein Hund spielt im Schnee",
    "un gato durmiendo en el sofá",
    "海辺で遊ぶ二人の子供",
    "Собака бежит по пляжу",
    "Ο σκύλος τρέχει",
    "x" * 300,
    "",
    "  Two   spaces  ",
]
GUARD_COSINE = 0.999
GUARD_OVERLAP = 0.95
BATCH_COSINE = 0.99999


@dataclass(frozen=True)
class Family:
    family: str
    model: str
    tag: str | None  # the published tag whose recipe the random weights run with
    hf: str | None = None  # stand-in kind: "tokenizer" (Hugging Face tokenizer), "xlm-roberta" (tokenizer + tower)
    slow: bool = False


FAMILIES = (
    Family("ViT", "ViT-B-32", "laion2b_s34b_b79k", slow=True),
    Family("ResNet", "RN50", "openai"),
    Family("ConvNeXt", "convnext_base", "laion400m_s13b_b51k", slow=True),
    Family("EVA", "EVA02-B-16", "merged2b_s8b_b131k", slow=True),
    Family("MobileCLIP", "MobileCLIP-S1", "datacompdr", slow=True),
    Family("MobileCLIP2", "MobileCLIP2-S0", "dfndr2b", slow=True),
    Family("CoCa", "coca_ViT-B-32", "laion2b_s13b_b90k", slow=True),
    Family("SigLIP", "ViT-B-16-SigLIP", "webli", hf="tokenizer", slow=True),
    Family("SigLIP2", "ViT-B-32-SigLIP2-256", "webli", hf="tokenizer", slow=True),
    Family("multilingual", "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", hf="xlm-roberta", slow=True),
)
BY_MODEL = {f.model: f for f in FAMILIES}


@dataclass
class Row:
    family: Family
    chosen: str = ""  # what auto runs for files on this machine
    agreement: dict = field(default_factory=dict)  # backend -> (min cosine, top-10 overlap)
    batch: dict = field(default_factory=dict)  # backend -> min cosine alone vs in a batch
    preprocess_max_diff: float = float("nan")
    tokenizer_mismatches: int = -1
    tokenizer: str = ""
    index_then_query: float = float("nan")  # min cosine of a photo's stored vector to its later query vector
    cold_query_s: float | None = None
    problems: list[str] = field(default_factory=list)


def captions_and_photos(n: int, per_photo: int = 5) -> tuple[list[str], list[Path]]:
    """The first ``n`` shared photos and ``per_photo`` of their captions each."""
    entries = json.loads((SHARED / "coco_mini" / "coco_mini_captions.json").read_text())[:n]
    return [c for e in entries for c in e["caption"][:per_photo]], [SHARED / "coco_mini" / e["image"] for e in entries]


def prepare_hf(family: Family) -> None:
    """The family's Hugging Face files as stand-ins (tests/standins.py), in the cache at $HF_HOME (which
    huggingface_hub reads once, at import: ``main`` sets it first)."""
    from imgsearch import architectures

    import standins

    if family.hf is None:
        return
    hf_home = Path(os.environ["HF_HOME"])
    texts = [
        c for e in json.loads((SHARED / "coco_mini" / "coco_mini_captions.json").read_text()) for c in e["caption"]
    ]
    text_cfg = architectures.architecture(family.model)["text_cfg"]
    if family.hf == "xlm-roberta":
        standins.xlm_roberta(hf_home, text_cfg["hf_model_name"], texts + OTHER_LANGUAGES)
    else:
        standins.tokenizer(hf_home, text_cfg["hf_tokenizer_name"], texts + OTHER_LANGUAGES)


def measure(family: Family, work: Path, cold: bool = False, photos: int = 239, per_photo: int = 5) -> Row:
    """Every check for one family; ``work`` holds its cache, collection and Hugging Face stand-ins."""
    import imgsearch
    from imgsearch.clip.embedder import Embedder
    from imgsearch.config import ModelConfig
    from imgsearch.inference import backends
    from imgsearch.inference.preprocess import preprocess
    from imgsearch.inference.tokenizer import for_export

    os.environ["IMGSEARCH_CACHE"] = str(work / "cache")
    prepare_hf(family)
    row, model = Row(family), ModelConfig(family.model, None, device="cpu", pretrained_as=family.tag)
    captions, photos = captions_and_photos(photos, per_photo)
    folder = work / "photos"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    with imgsearch.open(work / "collection", model=model) as first:  # the first run: exports, then embeds
        row.chosen = first.index_folder(folder).backend
        indexed = {Path(h.path).name: h.id for h in first.browse(limit=1000)}
        stored = first._store_for().vectors("images", list(indexed.values()))
    reference = Embedder(replace(model, backend="torch", precision="fp32"))
    images = [Image.open(p).convert("RGB") for p in photos]
    truth_images, truth_texts = _images(reference, images), reference.embed_texts(captions + OTHER_LANGUAGES)
    export = backends.find_export(model)
    runners = _runners(model, export, reference)
    for name, encoder in runners.items():
        got_images, got_texts = _images(encoder, images), encoder.embed_texts(captions + OTHER_LANGUAGES)
        cosine = min(_min_cos(got_images, truth_images), _min_cos(got_texts, truth_texts))
        row.agreement[name] = (
            cosine,
            _top10_overlap(got_texts[: len(captions)], got_images, truth_texts[: len(captions)], truth_images),
        )
        alone = np.concatenate([encoder.embed_images([im]) for im in images[:8]])
        row.batch[name] = _min_cos(alone, encoder.embed_images(images[:8]))
    row.preprocess_max_diff = max(
        float(np.abs(preprocess(im, export.meta["preprocess"]) - reference.preprocess(im).numpy()).max())
        for im in images
    )
    row.tokenizer = export.meta.get("tokenizer", "")
    if export.torch_free_text:
        texts = captions + OTHER_LANGUAGES
        ours, theirs = for_export(export.meta, export.folder)(texts), reference._parts().tokenizer(texts).numpy()
        row.tokenizer_mismatches = int((ours != theirs).any(axis=1).sum())
    with imgsearch.open(work / "collection") as later:  # a new handle: the torch-free query path, decoding as indexing
        assert later.query_encoder.backend.startswith("onnx"), later.query_encoder
        queried = np.stack([later.query_vector(str(folder / p.name)) for p in photos[:24] if p.name in indexed])
    stored_rows = np.stack([stored[indexed[p.name]] for p in photos[:24] if p.name in indexed])
    row.index_then_query = _min_cos(queried, stored_rows)
    if cold:
        row.cold_query_s = cold_query(work / "collection", model)
    row.problems = problems(row)
    return row


def _images(encoder, images: list, batch: int = 16) -> np.ndarray:
    """Embedded in batches: one forward pass over hundreds of photos holds their activations all at once."""
    return np.concatenate([encoder.embed_images(images[i : i + batch]) for i in range(0, len(images), batch)])


def _runners(model, export, reference) -> dict:
    """Every backend auto may choose on some CPU, as an encoder with embed_images / embed_texts."""
    from imgsearch.clip.embedder import Embedder
    from imgsearch.inference import backends
    from imgsearch.inference.query import OnnxQueryEncoder

    found = {
        "onnx fp32 (query)": OnnxQueryEncoder(export, threads=None),
        "onnx fp32": Embedder(replace(model, backend="onnx")),
    }
    if backends.openvino_installed() and export.openvino_passed:
        found["openvino"] = Embedder(replace(model, backend="openvino"))
        if backends.fast_int8():  # auto runs OpenVINO's int8 tower where it passed its check, on CPUs with VNNI
            int8 = Embedder(replace(model, backend="openvino-int8"))
            if int8.backend == "openvino int8" and backends.find_export(model).openvino_int8_passed:
                found["openvino int8"] = int8
    bf16 = Embedder(replace(model, backend="torch", precision="auto"))
    if bf16.backend == "torch bf16":  # it passed its check at load on this CPU
        found["torch bf16"] = bf16
    return found


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def _top10_overlap(queries, gallery, truth_queries, truth_gallery, k: int = 10) -> float:
    ours = np.argsort(-(queries @ gallery.T), axis=1)[:, :k]
    theirs = np.argsort(-(truth_queries @ truth_gallery.T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def problems(row: Row) -> list[str]:
    found = [f"{name}: cosine {c:.5f} < {GUARD_COSINE}" for name, (c, _) in row.agreement.items() if c < GUARD_COSINE]
    found += [
        f"{name}: top-10 overlap {o:.3f} < {GUARD_OVERLAP}"
        for name, (_, o) in row.agreement.items()
        if o < GUARD_OVERLAP
    ]
    found += [
        f"{name}: alone vs in a batch {c:.6f} < {BATCH_COSINE}" for name, c in row.batch.items() if c < BATCH_COSINE
    ]
    if not row.preprocess_max_diff <= 1e-5:
        found.append(f"preprocessing differs from open_clip's by {row.preprocess_max_diff:.2g}")
    if row.tokenizer_mismatches != 0:
        found.append(
            f"tokenizer: {row.tokenizer_mismatches} texts tokenized differently"
            if row.tokenizer_mismatches > 0
            else f"no torch-free tokenizer ({row.tokenizer})"
        )
    if not row.index_then_query >= GUARD_COSINE:
        found.append(f"a later query disagrees with the first run's vectors (cosine {row.index_then_query:.5f})")
    return found


def cold_query(collection: Path, model) -> float:
    """Seconds of a whole `imgsearch query` process (best of three), text to images, through no server."""
    env = dict(os.environ, IMGSEARCH_SERVER="off")
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "imgsearch", "query", "a dog on a beach", "--index", str(collection)],
            env=env,
            check=True,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - started)
    return best


def table(rows: list[Row]) -> str:
    base = next((r.cold_query_s for r in rows if r.family.model == "ViT-B-32" and r.cold_query_s), None)
    lines = [
        "| family | model (recipe) | auto runs | agreement: min cosine / top-10 overlap | alone vs batch | "
        "preprocessing | tokenizer | index then query | cold query |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "<br>".join(f"{n}: {c:.5f} / {o:.2f}" for n, (c, o) in r.agreement.items())
        batch = f"{min(r.batch.values()):.6f}" if r.batch else "-"
        token = f"{r.tokenizer}, {'equal' if r.tokenizer_mismatches == 0 else r.tokenizer_mismatches}"
        cold = (
            f"{r.cold_query_s:.2f} s ({r.cold_query_s / base:.2f}x)"
            if r.cold_query_s and base
            else f"{r.cold_query_s:.2f} s"
            if r.cold_query_s
            else "-"
        )
        lines.append(
            f"| {r.family.family} | {r.family.model} ({r.family.tag}) | {r.chosen} | {agree} | {batch} | "
            f"max diff {r.preprocess_max_diff:.1g} | {token} | {r.index_then_query:.5f} | {cold} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="models to check (default: every family)")
    parser.add_argument("--cold", action="store_true", help="also time a cold text query per model")
    parser.add_argument("--photos", type=int, default=239, help="shared photos to use")
    parser.add_argument("--per-photo", type=int, default=5, help="captions of each photo to use")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    chosen = [BY_MODEL[m] for m in args.models] if args.models else list(FAMILIES)
    if len(chosen) > 1:  # each family in a process of its own: memory, and huggingface_hub's cache location
        rows = [_in_own_process(family, args) for family in chosen]
        print(table(rows))
        sys.exit(1 if any(r.problems for r in rows) else 0)
    with tempfile.TemporaryDirectory() as root:
        os.environ.setdefault("HF_HOME", str(Path(root) / "hf"))  # before huggingface_hub is imported
        os.environ["HF_HUB_OFFLINE"] = "1"
        rows = []
        for n, family in enumerate(chosen):
            started = time.perf_counter()
            (Path(root) / str(n)).mkdir()
            rows.append(measure(family, Path(root) / str(n), args.cold, args.photos, args.per_photo))
            print(
                f"{family.model}: {time.perf_counter() - started:.0f} s; problems: {rows[-1].problems or 'none'}",
                file=sys.stderr,
                flush=True,
            )
    print(json.dumps([as_json(r) for r in rows], indent=1) if args.json else table(rows))
    sys.exit(1 if any(r.problems for r in rows) else 0)


def _in_own_process(family: Family, args) -> Row:
    started = time.perf_counter()
    command = [
        sys.executable,
        __file__,
        family.model,
        "--photos",
        str(args.photos),
        "--per-photo",
        str(args.per_photo),
        "--json",
    ] + (["--cold"] if args.cold else [])
    proc = subprocess.run(command, capture_output=True, text=True)
    if not proc.stdout.strip():
        row = Row(family, problems=[f"the check crashed: {proc.stderr.strip().splitlines()[-1:]}"])
    else:
        data = json.loads(proc.stdout)[0]
        data["family"] = family
        data["agreement"] = {k: tuple(v) for k, v in data["agreement"].items()}
        row = Row(**data)
    print(
        f"{family.model}: {time.perf_counter() - started:.0f} s; problems: {row.problems or 'none'}",
        file=sys.stderr,
        flush=True,
    )
    return row


def as_json(row: Row) -> dict:
    from dataclasses import asdict

    return asdict(row)


if __name__ == "__main__":
    main()
