"""The server checks who is asking and what it is sent: forged Host headers (DNS rebinding), other origins, stalled
and piled-up connections, uploads that are not images or explode when decoded, bad parameters, a stale thumbnail,
token hygiene; and the CLI checks the server before it sends it anything. A real `imgsearch serve` subprocess,
real sockets."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from PIL import Image

import imgsearch
from imgsearch.server import discovery, guard

from conftest import COCO_MINI, Served, write_image

PHOTOS = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:8]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model, serve_env):
    if not PHOTOS:
        pytest.skip(f"shared photos not found under {COCO_MINI}")
    root = tmp_path_factory.mktemp("hardened")
    photos = root / "photos"
    photos.mkdir()
    for src in PHOTOS:
        shutil.copy(src, photos / src.name)
    coll = root / "coll"
    with imgsearch.open(coll, model=tiny_model) as engine:
        engine.index_folder(photos)
    server = Served(coll, env=serve_env)
    yield server, coll, photos
    server.stop()


def _raw(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, headers (lower-case names), body) of one request whose headers are exactly these (Host included)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_a_forged_host_header_is_refused(site):
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 names evil.example in Host (0.1 served it)."""
    server, _, _ = site
    port = _port(server)
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.2:{port}"):
        status, _, body = _raw(server, "GET", "/api/images/1/file", {"Host": host})
        assert status == 421 and json.loads(body)["error"] == "misdirected request", host
    status, _, _ = _raw(server, "GET", "/api/images/1/file")  # no Host at all: HTTP/1.1 itself refuses it
    assert status == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        status, headers, _ = _raw(server, "GET", "/api/health", {"Host": host})
        assert status == 200, host
        assert (
            headers["cross-origin-resource-policy"] == "same-origin" and headers["x-content-type-options"] == "nosniff"
        )


def test_the_allowed_names_follow_the_address_bound():
    assert guard.allowed_hosts("127.0.0.1", 8000) >= {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}
    assert "192.168.1.5:8000" in guard.allowed_hosts("192.168.1.5", 8000)
    assert "[::1]:9" in guard.allowed_hosts("::1", 9) and "localhost" in guard.allowed_hosts("127.0.0.1", 80)
    assert guard.allowed_hosts("0.0.0.0", 8000) is None  # any name the machine has: the token guards it


def test_uploads_are_images_from_our_own_origin(site):
    server, _, photos = site
    port = _port(server)
    photo = sorted(photos.iterdir())[0].read_bytes()
    host = {"Host": f"127.0.0.1:{port}"}
    status, _, body = _raw(server, "POST", "/api/search?limit=1", {**host, "Content-Type": "text/plain"}, photo)
    assert status == 415 and "image/* or application/octet-stream" in json.loads(body)["detail"]
    status, _, _ = _raw(server, "POST", "/api/search?limit=1", host, photo)  # no type at all: the same
    assert status == 415
    evil = {**host, "Content-Type": "image/jpeg", "Origin": "http://evil.example"}
    status, _, body = _raw(server, "POST", "/api/search?limit=1", evil, photo)
    assert status == 403 and "evil.example" in json.loads(body)["detail"]
    ours = {**host, "Content-Type": "image/jpeg", "Origin": f"http://127.0.0.1:{port}"}
    status, _, body = _raw(server, "POST", "/api/search?limit=1", ours, photo)
    assert status == 200 and len(json.loads(body)["results"]) == 1


@pytest.mark.e2e
def test_stalled_connections_are_closed_and_health_keeps_answering(site, serve_env):
    """0.1 held 400 incomplete requests open for good; 300 of them, with 256 file descriptors, made /api/health
    time out. Each socket here sends half a request head and waits: the server must close it by itself."""
    _, coll, _ = site
    server = Served(coll, env=serve_env, files=256)
    host, port = server.url.removeprefix("http://").split(":")
    stalled = []
    try:
        for _ in range(300):
            sock = socket.create_connection((host, int(port)), timeout=guard.HEAD_TIMEOUT * 4)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
            stalled.append(sock)
        for _ in range(3):  # answered while they hang, and again
            status, body = server.json("/api/health")
            assert status == 200 and body["status"] == "ok"
        for sock in stalled:  # each is closed by the server: EOF (or a reset); our timeout would raise instead
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b""
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_errors_are_worded_for_the_page_and_for_the_command_line(site):
    """0.1 told the gallery's reader to use `--image` and `img:` (which the server then refused) and showed
    `--after:` for a date typed in the page."""
    server, _, _ = site
    status, body = server.json("/api/search", {"q": "beach.jpg"})
    assert status == 400 and "drop it on the page" in body["detail"], body
    assert "--image" not in body["detail"] and "img:" not in body["detail"]
    assert "--image beach.jpg" in body["cli"]
    status, body = server.json("/api/search", {"q": "a dog", "after": "2023-13"})
    assert status == 400 and body["detail"].startswith("after: cannot read '2023-13'"), body
    assert body["cli"].startswith("--after: cannot read")
    status, body = server.json("/api/search", {"q": "img:/etc/passwd"})
    assert status == 400 and "drop the image on the page" in body["detail"] and "POST" not in body["detail"]


def test_bad_parameters_are_4xx_that_say_what_is_wrong(site):
    server, _, _ = site
    cases = {
        ("/api/search", "id:99999999999999999999999"): "is not an image id",
        ("/api/search", "1" + "0" * 308 + "*dog + cat"): "at most 1000",
        ("/api/search", " + ".join(["dog"] * 40)): "at most 32 are combined",
    }
    for (path, q), message in cases.items():
        status, body = server.json(path, {"q": q})
        assert status == 400 and message in body["detail"], (q[:40], body)
    for after in ("@nan", "@inf", "@1e400"):
        status, body = server.json("/api/search", {"q": "a dog", "after": after})
        assert status == 400 and "is not a time" in body["detail"], after
    for image_id in ("+1", "01", "1_0", "-1", "99999999999999999999"):
        status, body = server.json(f"/api/images/{image_id}")
        assert status == 404 and body["error"] == "not found", image_id
    status, _, _ = server.get("/", method="HEAD")
    assert status == 200


def test_a_thumbnail_is_not_served_once_its_file_changed_or_went(tmp_path, tiny_model, serve_env):
    photos = tmp_path / "photos"
    for i in range(3):
        write_image(photos / f"p{i}.png", i, (80, 60))
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
        ids = {Path(h.path).name: h.id for h in engine.browse()}
    server = Served(tmp_path / "coll", env=serve_env)
    try:
        for name in ("p0.png", "p1.png"):
            status, _, _ = server.get(f"/api/images/{ids[name]}/thumbnail")
            assert status == 200  # made and cached
        write_image(photos / "p0.png", 99, (80, 60))  # another picture under the same name
        (photos / "p1.png").unlink()
        for name in ("p0.png", "p1.png"):
            status, _, body = server.get(f"/api/images/{ids[name]}/thumbnail")
            assert status == 404 and "has changed or gone" in json.loads(body)["detail"], name
    finally:
        server.stop()


def test_uploads_that_would_explode_are_refused_with_a_reason(site, tmp_path):
    server, _, _ = site
    sliver = tmp_path / "sliver.png"
    Image.new("RGB", (1, 3000), (200, 10, 10)).save(sliver)  # 86 bytes: 4 s and 610 MB in 0.1
    status, body = server.json("/api/search", body=sliver.read_bytes(), method="POST")
    assert status == 400 and "proportions (1x3000) are beyond 50:1" in body["detail"]
    huge = tmp_path / "huge.png"
    Image.new("L", (7000, 7000)).save(huge)  # 49 M pixels in a few KB
    status, body = server.json("/api/search", body=huge.read_bytes(), method="POST")
    assert status == 400 and "exceeds the limit of 40,000,000" in body["detail"]


@pytest.mark.e2e
def test_the_token_cookie_is_the_servers_own_and_leaves_the_address(tmp_path, tiny_model, serve_env):
    photos = tmp_path / "photos"
    write_image(photos / "a.png", 1)
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-t0ken\n")
    server = Served(tmp_path / "coll", "--token-file", str(token_file), env=serve_env)
    try:
        port = _port(server)
        host = {"Host": f"127.0.0.1:{port}"}
        status, headers, _ = _raw(server, "GET", "/?token=s3cret-t0ken&x=1", host)
        assert status == 303 and headers["location"] == "/?x=1"  # the token out of the address bar and history
        assert headers["set-cookie"].startswith(f"imgsearch_token_{port}=s3cret-t0ken")
        status, _, _ = _raw(server, "GET", "/", {**host, "Cookie": f"imgsearch_token_{port}=s3cret-t0ken"})
        assert status == 200
        status, _, _ = _raw(server, "GET", "/", {**host, "Cookie": "imgsearch_token_1=s3cret-t0ken"})
        assert status == 401  # another server's cookie
        status, _, _ = _raw(server, "GET", "/api/health?token=s3cret-t0ken", host)
        assert status == 200  # scripts may still pass it in the address
        assert "s3cret-t0ken" not in " ".join(open(f"/proc/{server.proc.pid}/cmdline").read().split("\0"))
    finally:
        server.stop()


class _Impostor(BaseHTTPRequestHandler):
    """Another program on a port a dead server used: it answers anything, and records what it was sent."""

    seen: list = []

    def do_GET(self):  # noqa: N802
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        data = json.dumps({"results": [{"id": 1, "path": "/made/up.jpg", "score": 1.0}], "proof": "0" * 64}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_the_cli_sends_nothing_to_a_listener_that_is_not_the_collections_server(tmp_path, tiny_model):
    """0.1 trusted any live pid in server.json: after the server died and its pid and port were reused, the CLI sent
    the query and the token to whatever listened, and printed its made-up answer."""
    photos = tmp_path / "photos"
    write_image(photos / "a.png", 1)
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
    impostor = HTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        discovery.write(tmp_path / "coll", f"http://127.0.0.1:{impostor.server_port}", "the-token", "a" * 32)
        data = json.loads((tmp_path / "coll" / "server.json").read_text())
        (tmp_path / "coll" / "server.json").write_text(json.dumps({**data, "pid": os.getpid()}))  # a live pid
        proc = subprocess.run(
            [sys.executable, "-m", "imgsearch", "query", "a red square", "--index", str(tmp_path / "coll"), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "IMGSEARCH_SERVER"},
        )
        assert proc.returncode == 0, proc.stderr
        assert [h["path"] for h in json.loads(proc.stdout)] == [str(photos / "a.png")]  # answered in-process
        assert [path.split("?")[0] for _, path, _ in _Impostor.seen] == ["/api/identity"]
        assert all(auth is None for _, _, auth in _Impostor.seen)  # the token was never sent
    finally:
        impostor.shutdown()


@pytest.mark.e2e
def test_a_copied_collection_is_not_answered_by_the_originals_server(site, tmp_path):
    server, coll, _ = site
    copy = tmp_path / "copy"
    shutil.copytree(coll, copy)  # server.json included
    extra = tmp_path / "extra"
    write_image(extra / "only-in-the-copy.png", 5)
    with imgsearch.open(copy) as engine:
        engine.index_folder(extra)
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "query", "a red square", "--index", str(copy), "-k", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "IMGSEARCH_SERVER"},
    )
    assert proc.returncode == 0, proc.stderr
    assert str(extra / "only-in-the-copy.png") in [h["path"] for h in json.loads(proc.stdout)]
    local = subprocess.run(
        [sys.executable, "-m", "imgsearch", "query", "a red square", "--index", str(coll), "-k", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0 and len(json.loads(local.stdout)) == len(PHOTOS)  # the original: its server
