"""`imgsearch serve`: the HTTP API through real HTTP against a uvicorn subprocess (tiny model, real collection,
real COCO photos), its safety rules, fresh data without a restart, and the CLI's fast path through it."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgsearch
from imgsearch.config import VectorIndexConfig

from conftest import COCO_MINI, TINY_MODEL, Served, index_captioned

PHOTOS = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:16]


def _rotated_photo(path: Path) -> Path:
    """A JPEG stored 80x40 with EXIF orientation 6 (rotate 90°): upright it is 40 wide, 80 tall."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model, coco_captions, serve_env):
    if not PHOTOS:
        pytest.skip(f"shared photos not found under {COCO_MINI}")
    root = tmp_path_factory.mktemp("served")
    photos = root / "photos"
    for i, src in enumerate(PHOTOS):
        dest = photos / ("a" if i % 2 else "b") / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    _rotated_photo(photos / "b" / "rotated.jpg")
    shutil.copy(PHOTOS[0], photos / "victim.jpg")  # replaced by a link in a test
    coll = root / "coll"
    # ONNX Runtime fp32, as the server embeds uploads: stored and uploaded vectors are then the same, where the
    # default backend's would differ within its quality guard (enough to reorder the tiny model's crowded scores)
    from imgsearch.clip.embedder import Embedder

    onnx = Embedder(replace(tiny_model, backend="onnx"))
    index_captioned(coll, photos, onnx, coco_captions, [p.name for p in PHOTOS])
    server = Served(coll, "--max-upload-mb", "0.5", env=serve_env)
    yield server, coll, photos
    assert server.stop() == 0
    assert not (coll / "server.json").exists(), "a stopped server withdraws its discovery file"


def _ids(hits):
    return [h["id"] for h in hits]


def _id_of(server, path: Path) -> int:
    status, body = server.json("/api/images", {"limit": 100})
    return next(h["id"] for h in body["results"] if h["path"] == str(path))


def test_text_search_pages_and_agrees_with_the_api(site):
    server, coll, _ = site
    status, first = server.json("/api/search", {"q": "a dog on the grass", "limit": 5})
    assert status == 200 and len(first["results"]) == 5
    _, second = server.json("/api/search", {"q": "a dog on the grass", "limit": 5, "offset": 5})
    with imgsearch.open(coll) as engine:
        expected = engine.search("a dog on the grass", k=10)
    assert _ids(first["results"] + second["results"]) == [h.id for h in expected]
    assert first["results"][0] == expected[0].to_dict() | {"score": pytest.approx(expected[0].score, abs=2e-3)}
    assert set(first["timing"]) == {"encode_ms", "search_ms"}
    status, _, _ = server.get("/api/search", {"q": "dog", "offset": 990, "limit": 20})
    assert status == 400  # deeper than max_results


def test_query_arithmetic_and_filters_through_http(site):
    server, coll, photos = site
    _, body = server.json("/api/search", {"q": "beach + sunset - people", "limit": 30, "in": str(photos / "a")})
    assert body["results"] and all(h["path"].startswith(str(photos / "a") + os.sep) for h in body["results"])
    with imgsearch.open(coll) as engine:
        expected = engine.search("beach + sunset - people", k=30, filters=imgsearch.Filters(folders=(photos / "a",)))
    assert _ids(body["results"]) == [h.id for h in expected]
    _, portrait = server.json("/api/search", {"q": "red", "orientation": "portrait", "limit": 50})
    assert portrait["results"] and all(h["height"] > h["width"] for h in portrait["results"])
    assert str(photos / "b" / "rotated.jpg") in [h["path"] for h in portrait["results"]]
    _, none = server.json("/api/search", {"q": "red", "format": "png"})
    assert none["results"] == []


def test_browse_lists_newest_first_with_filters(site):
    server, _, photos = site
    _, body = server.json("/api/images", {"limit": 100})
    taken = [h["taken_at"] for h in body["results"]]
    assert len(taken) == len(PHOTOS) + 2 and taken == sorted(taken, reverse=True)
    assert all(h["score"] is None for h in body["results"])
    _, page = server.json("/api/images", {"limit": 3, "offset": 2})
    assert _ids(page["results"]) == _ids(body["results"])[2:5]
    _, under_b = server.json("/api/images", {"in": str(photos / "b"), "limit": 100})
    assert len(under_b["results"]) == len(PHOTOS) // 2 + 1


def test_more_like_this_by_id(site):
    server, _, photos = site
    image_id = _id_of(server, photos / "a" / PHOTOS[1].name)
    status, similar = server.json(f"/api/images/{image_id}/similar", {"limit": 4})
    assert status == 200 and similar["results"][0]["id"] == image_id
    assert similar["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    _, by_query = server.json("/api/search", {"q": f"id:{image_id}", "limit": 4})
    assert _ids(by_query["results"]) == _ids(similar["results"])
    status, body = server.json("/api/images/987654/similar")
    assert status == 404 and "987654" in body["detail"]


def test_upload_search_and_its_limits(site, tmp_path):
    server, _, photos = site
    photo = photos / "a" / PHOTOS[3].name
    status, body = server.json("/api/search", {"limit": 3}, body=photo.read_bytes(), method="POST")
    assert status == 200 and body["results"][0]["path"] == str(photo)
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    # text terms combine with the uploaded image
    status, mixed = server.json("/api/search", {"q": "a red car", "limit": 3}, body=photo.read_bytes(), method="POST")
    assert status == 200 and mixed["query"].startswith("a red car")
    status, body = server.json("/api/search", body=b"hello, not an image", method="POST")
    assert status == 400 and "not a usable image" in body["detail"]
    status, body = server.json("/api/search", body=os.urandom(600_000), method="POST")  # over --max-upload-mb 0.5
    assert status == 413 and "limited to" in body["detail"]
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 M pixels in a few KB
    assert bomb.stat().st_size < 500_000
    status, body = server.json("/api/search", body=bomb.read_bytes(), method="POST")
    assert status == 400 and "decompression bomb" in body["detail"]
    status, body = server.json("/api/search", body=b"", method="POST")
    assert status == 400 and "empty" in body["detail"]


def test_describe_by_id_and_by_upload(site):
    server, _, photos = site
    photo = photos / "a" / PHOTOS[5].name
    image_id = _id_of(server, photo)
    status, by_id = server.json(f"/api/images/{image_id}/describe", {"k": 3})
    assert status == 200 and len(by_id["results"]) == 3
    scores = [t["score"] for t in by_id["results"]]
    assert scores == sorted(scores, reverse=True)
    _, uploaded = server.json("/api/describe", {"k": 3}, body=photo.read_bytes(), method="POST")
    assert [t["id"] for t in uploaded["results"]] == [t["id"] for t in by_id["results"]]


def test_thumbnails_are_upright_and_cached_by_content(site):
    server, coll, photos = site
    image_id = _id_of(server, photos / "b" / "rotated.jpg")
    status, headers, body = server.get(f"/api/images/{image_id}/thumbnail", {"size": 100})
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    from io import BytesIO

    thumb = Image.open(BytesIO(body))
    assert thumb.size == (40, 80)  # upright (EXIF orientation applied), never enlarged
    assert thumb.getpixel((20, 10))[0] > 180  # the red half is on top once rotated
    _, row = server.json(f"/api/images/{image_id}")
    cached = list((coll / "thumbnails").rglob("*-128.jpg"))
    assert any(p.read_bytes() == body for p in cached)
    assert server.get(f"/api/images/{image_id}/thumbnail", {"size": 5000})[0] == 400


def test_files_are_served_only_by_indexed_id(site, tmp_path):
    server, _, photos = site
    photo = photos / "a" / PHOTOS[7].name
    image_id = _id_of(server, photo)
    status, headers, body = server.get(f"/api/images/{image_id}/file")
    assert status == 200 and body == photo.read_bytes() and headers["Content-Type"] == "image/jpeg"
    assert headers["X-Content-Type-Options"] == "nosniff"
    host, port = server.url.removeprefix("http://").split(":")
    for raw in [
        "/api/images/../../../../etc/passwd",
        "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
        "/api/images/%2e%2e/%2e%2e/etc/passwd/file",
        "/api/images/-1/file",
        "/api/images/0/file",
        f"/api/images/{2**70}/file",
        "/api/images/1e3/file",
        "/api/file?path=/etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/api/images/{image_id}/file?path=/etc/passwd",
    ]:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", raw)  # sent as written: no client-side normalisation
        response = conn.getresponse()
        data = response.read()
        conn.close()
        assert b"root:" not in data, raw
        if "?path=" in raw and str(image_id) in raw:
            assert data == photo.read_bytes()  # an extra parameter changes nothing
            continue
        assert response.status in (400, 404, 422), (raw, response.status)
        assert set(json.loads(data)) == {"error", "detail", "cli"}, raw
    # An indexed file replaced by a link to something outside: the link is never followed to serve it.
    victim = photos / "victim.jpg"
    victim_id = _id_of(server, victim)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not the indexed content")
    victim.unlink()
    victim.symlink_to(secret)
    for path in (f"/api/images/{victim_id}/file", f"/api/images/{victim_id}/thumbnail?size=512"):
        status, headers, body = server.get(path)
        assert status == 404 and b"not the indexed" not in body
        assert "changed or gone" in json.loads(body)["detail"]


def test_errors_are_json_with_status_and_no_traceback(site):
    server, _, _ = site
    cases = [
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/api/search?q=x", None, 405),
        ("GET", "/api/search?q=dog&limit=many", None, 422),
        ("GET", "/api/search", None, 422),
        ("GET", "/api/search?q=dog&after=someday", None, 400),
        ("GET", "/api/search?q=img:/etc/hosts", None, 400),
        ("GET", "/api/search?q=%22unclosed", None, 400),
        ("GET", "/api/search?q=id:424242", None, 404),
        ("GET", "/api/images/abc", None, 404),
        ("GET", "/api/images/1/describe?k=0", None, 400),
        ("POST", "/api/describe", b"junk", 400),
    ]
    for method, path, body, expected in cases:
        status, headers, data = server.get(path, body=body, method=method)
        assert status == expected, (path, status, data)
        assert headers["Content-Type"] == "application/json", path
        parsed = json.loads(data)
        assert set(parsed) == {"error", "detail", "cli"} and parsed["detail"], path
        assert "Traceback" not in data.decode() and 'File "' not in data.decode(), path
    status, spec = server.json("/api/openapi.json")
    assert status == 200 and "/api/search" in spec["paths"] and "/api/images/{image_id}/file" in spec["paths"]


@pytest.mark.e2e
def test_the_server_sees_a_concurrent_index_run_without_restart(site, tmp_path):
    server, coll, photos = site
    new = photos / "new"
    new.mkdir()
    added = [shutil.copy(p, new / f"new_{p.name}") for p in sorted((COCO_MINI / "train2017").glob("*.jpg"))[:3]]
    subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(photos), "--index", str(coll)],
        check=True,
        capture_output=True,
        timeout=300,
    )

    def top_path(photo):
        status, body = server.json("/api/search", {"limit": 1}, body=Path(photo).read_bytes(), method="POST")
        assert status == 200
        return body["results"][0]["path"]

    deadline = time.monotonic() + 20
    while top_path(added[0]) != str(added[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [top_path(p) for p in added] == [str(p) for p in added]
    gone_id = _id_of(server, Path(added[1]))
    Path(added[1]).unlink()
    subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(photos), "--index", str(coll)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    deadline = time.monotonic() + 20
    while server.get(f"/api/images/{gone_id}")[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.get(f"/api/images/{gone_id}")[0] == 404
    _, body = server.json("/api/search", {"q": f"id:{_id_of(server, Path(added[0]))}", "limit": 100})
    assert gone_id not in _ids(body["results"])
    with imgsearch.open(coll) as engine:  # the caught-up index equals a freshly loaded one
        assert _ids(body["results"]) == [h.id for h in engine.search(f"id:{_id_of(server, Path(added[0]))}", k=100)]


@pytest.mark.e2e
def test_cli_query_goes_through_the_running_server(site, tmp_path):
    server, coll, photos = site
    # In-process this cannot work: neither the tiny model's config nor its cached ONNX export is found.
    no_model = {k: v for k, v in os.environ.items() if k != "IMGSEARCH_MODEL_CONFIGS"}
    no_model["IMGSEARCH_CACHE"] = str(tmp_path / "empty-cache")

    def cli(*args, env=no_model):
        return subprocess.run(
            [sys.executable, "-m", "imgsearch", "query", *args, "--index", str(coll), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    through = cli("a dog + 2*grass", "-k", "4", "--in", str(photos / "a"))
    assert through.returncode == 0, through.stderr
    _, body = server.json("/api/search", {"q": "a dog + 2*grass", "limit": 4, "in": str(photos / "a")})
    assert json.loads(through.stdout) == body["results"]
    photo = photos / "a" / PHOTOS[3].name
    by_image = cli("--image", str(photo), "-k", "2")
    assert by_image.returncode == 0 and json.loads(by_image.stdout)[0]["path"] == str(photo)
    described = cli("--texts", "--image", str(photo), "-k", "2")
    assert described.returncode == 0 and len(json.loads(described.stdout)) == 2
    local = cli("a dog", "--server", "off")
    assert local.returncode != 0 and TINY_MODEL in local.stderr  # in-process it needs the model configs
    dead = cli("a dog", "--server", "http://127.0.0.1:9")
    assert dead.returncode == 1 and "no imgsearch server answered" in dead.stderr and "Traceback" not in dead.stderr


def test_a_stale_discovery_file_falls_back_to_in_process(site, tmp_path):
    _, coll, _ = site
    copy = tmp_path / "copy"
    shutil.copytree(coll, copy, ignore=shutil.ignore_patterns("thumbnails", "server.json"))
    (copy / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 2**22 + 12345}))
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "query", "a dog", "--index", str(copy), "-k", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


@pytest.mark.e2e
def test_other_addresses_need_a_token_and_every_request_carries_it(site, tmp_path, serve_env):
    _, coll, _ = site
    refused = subprocess.run(
        [sys.executable, "-m", "imgsearch", "serve", "--index", str(coll), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "IMGSEARCH_TOKEN"},
    )
    assert refused.returncode == 1 and "--token" in refused.stderr and "Traceback" not in refused.stderr
    copy = tmp_path / "tokened"
    shutil.copytree(coll, copy, ignore=shutil.ignore_patterns("thumbnails", "server.json"))
    guarded = Served(copy, "--host", "0.0.0.0", "--token", "s3cret-token", env=serve_env)
    try:
        assert oct((copy / "server.json").stat().st_mode & 0o777) == "0o600"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "imgsearch_token=s3cret-token"}):
            for path in ("/api/health", "/api/images/1/file", "/", "/static/gallery.js"):
                status, _, body = guarded.get(path, headers=headers)
                assert status == 401 and json.loads(body)["error"] == "unauthorized", (path, headers)
        assert guarded.get("/api/health", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        cookie = f"imgsearch_token_{guarded.url.rsplit(':', 1)[1]}"  # named after the port (test_server_hardening)
        assert guarded.get("/api/health", headers={"Cookie": f"{cookie}=s3cret-token"})[0] == 200
        assert guarded.get("/api/health", {"token": "s3cret-token"})[0] == 200
        # the CLI finds the token in the discovery file
        no_model = {k: v for k, v in os.environ.items() if k != "IMGSEARCH_MODEL_CONFIGS"}
        no_model["IMGSEARCH_CACHE"] = str(tmp_path / "empty-cache")
        proc = subprocess.run(
            [sys.executable, "-m", "imgsearch", "query", "a dog", "--index", str(copy), "-k", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            env=no_model,
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        guarded.stop()


def test_a_missing_collection_says_how_to_build_one(tmp_path):
    missing = tmp_path / "not-yet"
    missing.mkdir()
    served = Served(missing)
    try:
        status, info = served.json("/api/info")
        assert status == 200 and info["state"] == "missing" and "imgsearch index" in info["hint"]
        status, body = served.json("/api/search", {"q": "dog"})
        assert status == 404 and "imgsearch index" in body["detail"]
        status, _, page = served.get("/")
        assert status == 200 and b"gallery.js" in page
    finally:
        served.stop()


@pytest.mark.parametrize("ivf", [False, True])
def test_a_live_reader_catches_up_like_a_fresh_load(tmp_path, tiny_embedder, ivf):
    """Adds, re-embedded files and deletions made by a writer reach a live reader's loaded index, which then
    searches exactly like a freshly opened collection (Flat and IVF)."""
    from conftest import write_image

    photos = tmp_path / "photos"
    for i in range(40):
        write_image(photos / f"p{i}.png", seed=i)
    config = VectorIndexConfig(ivf_threshold=20 if ivf else 10_000, nprobe=64)
    writer = imgsearch.open(tmp_path / "coll", embedder=tiny_embedder, index_config=config)
    writer.index_folder(photos)
    reader = imgsearch.open(tmp_path / "coll", embedder=tiny_embedder, index_config=config, live=True)
    probe = tiny_embedder.embed_texts(["a probe"])[0]
    reader.search_vector(probe, 5)  # loads the index
    assert reader.refresh() is False
    for i in range(40, 50):
        write_image(photos / f"p{i}.png", seed=i)
    for i in range(5):
        (photos / f"p{i}.png").unlink()
    for i in range(5, 8):
        write_image(photos / f"p{i}.png", seed=100 + i)  # same path, new content: re-embedded, same id
    writer.index_folder(photos)
    assert reader.refresh() is True
    fresh = imgsearch.open(tmp_path / "coll", embedder=tiny_embedder, index_config=config)
    for text in ["a probe", "red", "blue squares"]:
        vector = tiny_embedder.embed_texts([text])[0]
        got, want = reader.search_vector(vector, 45), fresh.search_vector(vector, 45)
        assert [h.id for h in got] == [h.id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    assert reader._synced("images").index.ntotal == 45
    with pytest.raises(RuntimeError, match="live=True"):
        fresh.refresh()


def test_a_live_reader_takes_the_writers_retrained_index_once_it_outgrows_its_own(tmp_path, tiny_embedder):
    from conftest import write_image

    photos = tmp_path / "photos"
    for i in range(10):
        write_image(photos / f"p{i}.png", seed=i)
    config = VectorIndexConfig(ivf_threshold=30)
    writer = imgsearch.open(tmp_path / "coll", embedder=tiny_embedder, index_config=config)
    writer.index_folder(photos)
    reader = imgsearch.open(tmp_path / "coll", embedder=tiny_embedder, index_config=config, live=True)
    probe = tiny_embedder.embed_texts(["a probe"])[0]
    reader.search_vector(probe, 5)
    assert reader.info().image_index == "flat"
    for i in range(10, 60):
        write_image(photos / f"p{i}.png", seed=i)
    writer.index_folder(photos)  # past the threshold: the writer trains and saves an IVF index
    assert reader.refresh() is True
    assert reader.info().image_index == "ivf" and reader._synced("images").index.ntotal == 60
    assert reader.refresh() is False  # nothing new since
