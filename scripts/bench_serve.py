"""Latency and throughput of `imgsearch serve`, driven over real HTTP by bounded concurrent clients.

    python scripts/bench_serve.py                      # the shared photos and 200k vectors, ViT-B-32 (random weights)
    python scripts/bench_serve.py --n 50000 --requests 100
    python scripts/bench_serve.py --batching-only --requests 200   # serve --batch against the default
    python scripts/bench_serve.py --compare-only --requests 200    # texts cut (today) against 77 tokens, and --batch

First, side by side: the same collection served with texts cut after the batch's longest (``text_trim``, today)
and at 77 tokens (the same export, marked full length: before), then with micro-batching and without. Then two
collections, each served by a real `imgsearch serve` subprocess on localhost:
- the 239 shared COCO photos (../shared/data/coco_mini), indexed here with --model (random weights: same compute);
- --n synthetic clustered vectors (bench_search.make_data) written through imgsearch's store, model --model.
For each, text queries (a different COCO caption each time) and by-id queries ("more like this": no encoder) at
1, 4 and 16 concurrent clients (keep-alive connections, --requests per level): p50/p95 latency and QPS. The split
comes from the server's own timing (encode, search) against the client's latency (the rest is HTTP and JSON),
and the text encoder's own time is measured in this process on the same queries, side by side. Last, `imgsearch
query` as a whole process through the running server, against `python -c pass`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_filters import build, metadata  # noqa: E402
from bench_search import make_data  # noqa: E402

import imgsearch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--photos", type=Path, default=SHARED)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--requests", type=int, default=200, help="requests per kind and concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--cli-runs", type=int, default=7)
    parser.add_argument("--batching-only", action="store_true", help="only the micro-batching comparison")
    parser.add_argument(
        "--compare-only", action="store_true", help="only the side-by-side comparisons (cut texts, micro-batching)"
    )
    return parser.parse_args(argv)


def captions(photos: Path) -> list[str]:
    found = json.loads((photos / "coco_mini_captions.json").read_text())
    return [c for entry in found for c in entry["caption"]]


def imgsearch_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgsearch", *args], check=True, capture_output=True, text=True, **kwargs
    )


class Server:
    def __init__(self, collection: Path, batch: bool = False, env: dict | None = None):
        (collection / "server.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "serve", "--index", str(collection), "--port", "0"]
            + (["--batch"] if batch else []),
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        while not (collection / "server.json").exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"the server did not start: {self.proc.stderr.read()}")
            time.sleep(0.1)
        url = json.loads((collection / "server.json").read_text())["url"]
        self.host, self.port = url.removeprefix("http://").split(":")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def drive(server: Server, paths: list[str], concurrency: int) -> dict:
    """Each path requested once, by ``concurrency`` clients on keep-alive connections."""
    latencies, timings, lock, queue = [], [], threading.Lock(), list(reversed(paths))

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, int(server.port), timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                path = queue.pop()
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise SystemExit(f"{path}: HTTP {response.status} {body[:200]!r}")
            with lock:
                latencies.append(elapsed * 1e3)
                timings.append(json.loads(body)["timing"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = np.percentile(latencies, [50, 95])
    return {
        "p50": q[0],
        "p95": q[1],
        "qps": len(paths) / wall,
        "encode": statistics.median(t["encode_ms"] for t in timings),
        "search": statistics.median(t["search_ms"] for t in timings),
    }


def encoder_ms(collection: Path, texts: list[str]) -> float:
    """The text encoder's own time per query, warm, in this process (the server's encoder choice)."""
    with imgsearch.open(collection) as engine:
        encoder = engine.query_encoder
        encoder.embed_texts(["warm up"])
        times = []
        for text in texts:
            started = time.perf_counter()
            encoder.embed_texts([text])
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def whole_process(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(servers: dict[str, Server], texts: list[str], args, title: str) -> None:
    """Text queries on two servers (the first is "after", the second "before") of the same collection, each
    level run twice, interleaved: p50/p95 and QPS at 1 and 16 clients, their ratio at 16 and p95 change at 1."""
    rows: dict = {}
    try:
        fresh = random.Random(0).sample(texts, len(texts))  # each (level, run) its own captions: no cache hits
        n = min(args.requests, len(texts) // 4)
        for step, level in enumerate((1, 1, 16, 16)):  # each level twice: the two servers interleaved
            chosen = fresh[step * n : (step + 1) * n]
            paths = [f"/api/search?{urllib.parse.urlencode({'q': t, 'limit': 20})}" for t in chosen]
            for name, server in servers.items():
                rows.setdefault((name, level), []).append(drive(server, paths, level))
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{title}, text queries (distinct captions, so the cache does not answer them):")
    print(f"{'server':22} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'QPS':>7}   (best of 2 interleaved runs)")
    for (name, level), runs in rows.items():
        best = max(runs, key=lambda r: r["qps"])
        print(f"{name:22} {level:>7} {best['p50']:>8.1f} {best['p95']:>8.1f} {best['qps']:>7.1f}")
    after, before = servers
    qps = {name: max(r["qps"] for r in rows[(name, 16)]) for name in servers}
    p95 = {name: min(r["p95"] for r in rows[(name, 1)]) for name in servers}
    print(f"QPS at 16 clients: {qps[after] / qps[before]:.2f}x; p95 at 1 client: {p95[after] - p95[before]:+.1f} ms")


def full_length_cache(model: str, work: Path) -> dict[str, str]:
    """The environment of a server whose export runs its text tower at full length (77 tokens), as before exports
    could cut it (``text_trim``): the same export, its files linked, its meta.json without the mark."""
    from imgsearch.config import ModelConfig
    from imgsearch.inference import backends

    export = backends.find_export(ModelConfig(model, None))
    if export is None or not export.meta.get("text_trim"):
        raise SystemExit(f"the export of {model} does not cut its texts: nothing to compare")
    cache = work / "full-length-cache"
    folder = cache / export.folder.relative_to(backends.cache_dir())
    folder.mkdir(parents=True)
    for f in export.folder.iterdir():
        if f.name != "meta.json":
            os.link(f, folder / f.name)
    meta = {k: v for k, v in export.meta.items() if k != "text_trim"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return {**os.environ, "IMGSEARCH_CACHE": str(cache)}


def bench(name: str, collection: Path, texts: list[str], ids: list[int], args) -> None:
    rng = random.Random(0)
    server = Server(collection)
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
        own = encoder_ms(collection, texts[: args.requests])
        print(f"\n{name}: text encoder alone {own:.1f} ms/query (median, warm, this process)")
        print(
            f"{'kind':8} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'QPS':>7} {'encode':>7} {'search':>7} "
            f"{'http+json':>9}"
        )
        for kind in ("text", "by-id"):
            for level in levels:
                if kind == "text":
                    chosen = rng.sample(texts, args.requests)
                    paths = [f"/api/search?{urllib.parse.urlencode({'q': t, 'limit': 20})}" for t in chosen]
                else:
                    paths = [f"/api/images/{rng.choice(ids)}/similar?limit=20" for _ in range(args.requests)]
                r = drive(server, paths, level)
                rest = r["p50"] - r["encode"] - r["search"] if level == 1 else float("nan")
                print(
                    f"{kind:8} {level:>7} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['qps']:>7.1f} {r['encode']:>7.1f} "
                    f"{r['search']:>7.1f} {rest:>9.1f}"
                )
        query = [sys.executable, "-m", "imgsearch", "query", "a dog on a beach", "--index", str(collection)]
        through = whole_process(query, args.cli_runs)
        baseline = whole_process([sys.executable, "-c", "pass"], args.cli_runs)
        print(
            f"CLI `imgsearch query` through the server, whole process: {through:.3f} s median of {args.cli_runs} "
            f"(python -c pass: {baseline:.3f} s)"
        )
    finally:
        server.stop()


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = captions(args.photos)
    print(
        f"bench_serve: {os.cpu_count()} CPUs, model {args.model} (random weights), {args.requests} requests "
        f"per level, concurrency {args.concurrency}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
        work = Path(work)
        photos = work / "photos_coll"
        imgsearch_cli("index", str(args.photos), "--index", str(photos), "--model", args.model, "--pretrained", "none")
        with imgsearch.open(photos) as engine:
            photo_ids = [h.id for h in engine.browse(limit=10_000)]
        if not args.batching_only:
            before = full_length_cache(args.model, work)
            servers = {"texts cut (today)": Server(photos), "full length (before)": Server(photos, env=before)}
            compare(servers, texts, args, "texts cut after the longest against 77 tokens")
        compare(
            {"batched (--batch)": Server(photos, batch=True), "one at a time": Server(photos)},
            texts,
            args,
            "micro-batching",
        )
        if args.batching_only or args.compare_only:
            return
        bench(f"{len(photo_ids)} shared photos", photos, texts, photo_ids, args)

        big = work / "big_coll"
        big.mkdir()
        started = time.perf_counter()
        vectors = make_data(
            argparse.Namespace(n=args.n, dim=512, clusters=100, spread=2.0, intrinsic=64, queries=1, seed=0)
        )[0]
        build(big, vectors, metadata(args.n, np.random.default_rng(0)))
        (work / "one").mkdir()  # a writer saves the index once (a folder without images is refused)
        shutil.copy(next(args.photos.glob("*/*.jpg")), work / "one")
        imgsearch_cli("index", str(work / "one"), "--index", str(big))
        print(f"\n(built the {args.n:,}-vector collection in {time.perf_counter() - started:.0f} s)")
        bench(f"{args.n:,} vectors", big, texts, list(range(1, args.n + 1)), args)


if __name__ == "__main__":
    main()
