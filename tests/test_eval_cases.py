"""Hand-built embeddings the evaluator must not be fooled by. Each case's expected metrics are worked out
here by hand (chance = the expected value under random tie-breaking), and the exact path and the index
path (a real faiss Flat index) must both give them."""

import json
import subprocess
import sys

import numpy as np
import pytest

import imgsearch.storage.vector_index as index_module
from imgsearch.config import VectorIndexConfig
from imgsearch.errors import DatasetError, InvalidEmbeddingsError
from imgsearch.evaluation.datasets import load_dataset
from imgsearch.evaluation.retrieval import evaluate_embeddings

from conftest import COCO_MINI, SHARED_DATA, TINY_MODEL


def both_paths(images, texts, owner, config=VectorIndexConfig()):
    t2i, i2t = evaluate_embeddings(
        np.asarray(images, np.float32), np.asarray(texts, np.float32), np.asarray(owner), config
    )
    for direction in (t2i, i2t):
        assert direction.index == pytest.approx(direction.exact, abs=1e-9), "exact and index paths disagree"
    return t2i.exact, i2t.exact


def values(m):
    return [m.r1, m.r5, m.r10, m.mrr]


def chance(n):
    """One relevant item among n, all tied: it is at each position with probability 1/n."""
    return [min(1, k / n) for k in (1, 5, 10)] + [sum(1 / p for p in range(1, n + 1)) / n]


def test_identical_embeddings_score_chance_not_perfect():
    same = np.tile([[0.6, 0.8]], (4, 1))  # a collapsed model: every image and caption the same vector
    t2i, i2t = both_paths(same, same, owner=[0, 1, 2, 3])
    assert values(t2i) == pytest.approx(chance(4)) and values(i2t) == pytest.approx(chance(4))
    assert t2i.r1 == pytest.approx(0.25)


def test_all_zero_embeddings_score_chance():
    zeros = np.zeros((12, 8))
    t2i, i2t = both_paths(zeros, zeros, owner=range(12))
    assert values(t2i) == pytest.approx(chance(12)) and values(i2t) == pytest.approx(chance(12))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_embeddings_are_an_error_naming_the_cause(bad):
    images = np.eye(3, dtype=np.float32)
    images[1, 0] = bad
    with pytest.raises(InvalidEmbeddingsError, match="1 of 3 image embeddings contain NaN or inf"):
        evaluate_embeddings(images, np.eye(3, dtype=np.float32), np.arange(3))


def test_ties_at_the_k_boundary():
    # 12 images; caption 0's image ties with 4 others right after 2 strictly better ones:
    # rank = 3 + X with X uniform on 0..4, so R@1 = 0, R@5 = P(X <= 2) = 3/5, R@10 = 1.
    images = np.zeros((12, 3), np.float32)
    images[:, 2] = 1.0  # the rest score 0 against the caption
    images[[0, 1], :] = [1.0, 0, 0]  # strictly better
    images[2:7, :] = [0.5, np.sqrt(0.75), 0]  # tied block; image 2 is the caption's own
    caption = np.array([[1.0, 0, 0]], np.float32)
    t2i, _ = both_paths(images, caption, owner=[2])
    assert values(t2i) == pytest.approx([0, 3 / 5, 1, sum(1 / (3 + x) for x in range(5)) / 5])


def test_duplicate_captions_of_two_images_split_the_credit():
    # Captions 0 and 1 are the same text for images 0 and 1: each image's query ties its own caption
    # with the other's, so R@1 = 1/2 in both directions.
    images = np.array([[1, 0], [1, 0]], np.float32)
    texts = np.array([[1, 0], [1, 0]], np.float32)
    t2i, i2t = both_paths(images, texts, owner=[0, 1])
    assert values(t2i) == pytest.approx([0.5, 1, 1, 0.75]) and values(i2t) == pytest.approx([0.5, 1, 1, 0.75])


def test_an_image_without_captions_is_not_found_in_image_to_text():
    # 8 captions, all for images 0..7; image 8 has none. It used to get rank n+1 = 9: a hit at R@10.
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(8, 16)).astype(np.float32)
    images = np.vstack([texts, rng.normal(size=(1, 16))]).astype(np.float32)
    _, i2t = both_paths(images, texts, owner=range(8))
    assert values(i2t) == pytest.approx([8 / 9, 8 / 9, 8 / 9, 8 / 9])


def test_gpu_k_cap_is_respected(monkeypatch):
    """GPU indexes answer k <= 2048; the evaluator asks for the whole gallery. Simulated cap: a larger k
    must be searched on the CPU index, and give the same metrics."""
    calls = []

    class CappedGpuIndex:
        def __init__(self, cpu):
            self.cpu = cpu

        def search(self, queries, k):
            calls.append(k)
            assert k <= index_module.GPU_MAX_K, "k beyond the GPU cap reached the GPU index"
            return self.cpu.search(queries, k)

    monkeypatch.setattr(index_module, "GPU_MAX_K", 20)
    monkeypatch.setattr(index_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(index_module.faiss, "index_cpu_to_all_gpus", CappedGpuIndex)
    monkeypatch.setattr(index_module, "_GPU_MIN_QUERIES", 1)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(30, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    t2i, _ = both_paths(images, images[:10], owner=range(10))
    assert t2i.r1 == pytest.approx(1.0) and calls == [10]  # k = 30 > cap stayed on the CPU; k = 10 went to the GPU
    hits = index_module.VectorIndex.build(8, np.arange(30), images).search(images[:3], 5)
    assert hits.ids[:, 0].tolist() == [0, 1, 2] and calls == [10, 5]  # small k still goes to the (simulated) GPU


# -- dataset files --------------------------------------------------------------------------------------------


def test_a_karpathy_file_with_six_captions_keeps_the_first_five(tmp_path):
    entry = {"filename": "a.jpg", "filepath": "", "split": "test", "sentences": [{"raw": f"c{i}"} for i in range(7)]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [entry, dict(entry, filename="b.jpg")]}))
    data = load_dataset("coco", path, tmp_path, check_images=False)
    assert data.captions == ("c0", "c1", "c2", "c3", "c4") * 2
    assert load_dataset("custom", path, tmp_path, check_images=False).n_captions == 14  # others keep all


def test_a_karpathy_file_without_a_test_split_is_refused(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(DatasetError, match="no image in the 'test' split \\(splits: train\\)"):
        load_dataset("coco", path, tmp_path, check_images=False)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not a text file"),  # a JPEG given as annotations
        ("{not json", "not valid JSON: .* line 1"),
        (
            json.dumps(
                {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 2, "caption": "x"}]}
            ),
            "#0 \\(id 5\\) names image_id 2",
        ),
        (json.dumps([{"image": "a.jpg", "captions": ["x"]}]), "an entry has no 'caption' field"),
    ],
)
def test_malformed_annotations_are_one_line_errors_naming_file_and_entry(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is None:
        path.write_bytes(next(COCO_MINI.rglob("*.jpg")).read_bytes())
    else:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset("coco", path, tmp_path, check_images=False)
    assert "\n" not in str(caught.value)


def _run_eval(*args):
    return subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", "eval", "coco", "--model", TINY_MODEL, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def two_images(tmp_path, coco_captions):
    items = [{"image": c["image"], "caption": c["caption"]} for c in coco_captions[:2]]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(items))
    return path


@pytest.mark.e2e
def test_eval_json_works_and_says_why_no_published_numbers(two_images, tmp_path):
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"x")  # never loaded: --pretrained none below; the file case is the reference rule
    proc = _run_eval("--images", str(COCO_MINI), "--annotations", str(two_images), "--pretrained", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["reference"] is None and "random weights" in report["reference_note"]


def test_json_out_into_a_missing_folder_fails_before_any_work(two_images, tmp_path):
    proc = _run_eval(
        "--images",
        str(COCO_MINI),
        "--annotations",
        str(two_images),
        "--pretrained",
        "none",
        "--json-out",
        str(tmp_path / "nope" / "r.json"),
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "embedding" not in proc.stderr


def test_reference_rows_need_the_full_split_and_a_known_model():
    from imgsearch.evaluation import reference

    full, why = reference.find("ViT-B-32", "laion2b_s34b_b79k", "coco", full_split=True)
    assert full["text_to_image"][0] == pytest.approx(0.3934) and why is None
    assert "used other images" in reference.find("ViT-B-32", "laion2b_s34b_b79k", "coco", False)[1]
    assert "--pretrained-as" in reference.find("ViT-B-32", "/x/ckpt.bin", "coco", True, from_file=True)[1]


@pytest.mark.parametrize(
    "name, kind, full",
    [
        ("flickr30k_test_karpathy.txt", "flickr30k", True),
        ("flickr30k_test_karpathy.json", "flickr30k", True),
        ("coco_test_karpathy.json", "coco", True),
        ("coco_karpathy_test_blipstyle.json", "coco", True),
        ("flickr8k_test.json", "flickr30k", False),  # 1,000 images and 5,000 captions too: the size proves nothing
        ("coco_test_karpathy.json", "flickr30k", False),
    ],
)
def test_the_full_split_is_known_by_its_images_not_its_size(name, kind, full):
    from imgsearch.evaluation import reference

    data = load_dataset(kind, SHARED_DATA / "annotations" / name, COCO_MINI, check_images=False)
    assert reference.is_full_split(kind, data.image_paths) is full
    assert not reference.is_full_split(kind, data.image_paths[:-1])  # one image short


def test_shared_coco_split_has_captions_shared_word_for_word_between_images():
    """The reason the tie rule matters on real data (numbers quoted in docs/evaluation.md)."""
    data = load_dataset("coco", SHARED_DATA / "annotations" / "coco_test_karpathy.json", COCO_MINI, check_images=False)
    owners: dict[str, set[int]] = {}
    for caption, owner in zip(data.captions, data.caption_image):
        owners.setdefault(" ".join(caption.lower().split()), set()).add(int(owner))
    shared = [c for c, o in owners.items() if len(o) > 1]
    assert len(shared) > 50
