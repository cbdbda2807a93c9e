"""Videos: sampled where the picture changes, stored as one entry with its frames beneath, found at the right
moment. Every video here is a real file written with PyAV (H.264, HEVC, VP9, MPEG-4) from shared COCO photos held
for known intervals, decoded by the real FFmpeg libraries and embedded by a real open_clip model."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import imgsearch
from imgsearch.config import VideoConfig
from imgsearch.video import Sampler, VideoReader, VideoSkipped

from conftest import TINY_MODEL, run_cli
from videos import coco_photos, stills, write_video

pytest.importorskip("av")

SHOT = 3.0  # seconds each photo is held
TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Three videos of eight shots each in three codecs and sizes, a rotated phone video, and a photo."""
    folder = tmp_path_factory.mktemp("library")
    photos = coco_photos(28)
    truth = {}
    for n, (name, fps, size) in enumerate(
        [("trip.mp4", 10, (192, 144)), ("party.webm", 12, (160, 96)), ("beach.mov", 15, (128, 128))]
    ):
        shots = photos[n * 8 : (n + 1) * 8]
        when = "2021-06-05T10:00:00.000000Z" if name == "trip.mp4" else None  # as phones write it
        write_video(folder / name, [(p, SHOT) for p in shots], fps=fps, size=size, creation_time=when)
        truth[name] = shots
    write_video(folder / "phone" / "upright.mp4", [(photos[24], SHOT), (photos[25], SHOT)], size=(96, 160), rotation=90)
    shutil.copy(photos[27], folder / "still.jpg")
    return folder, truth


@pytest.fixture(scope="module")
def indexed(library, tmp_path_factory, tiny_model):
    folder, _ = library
    with imgsearch.open(tmp_path_factory.mktemp("coll") / "c", model=tiny_model) as collection:
        report = collection.index_folder(folder)
        yield collection, report


# -- sampling ------------------------------------------------------------------------------------------------


def test_a_frame_is_kept_at_each_cut_at_least_every_interval_and_never_closer_than_the_gap():
    grey, white = np.zeros((18, 32), np.uint8), np.full((18, 32), 255, np.uint8)
    sampler = Sampler(VideoConfig(interval=4.0, min_gap=0.5, scene_change=0.12), duration=20.0)
    seen = [(0, grey), (1, grey), (2.0, white), (2.2, grey), (3.0, grey), (7.0, grey)]
    kept = [t for t, thumb in seen if sampler.wants(t, thumb)]
    # 0: first; 2.0: a cut; 2.2: a cut back, but within the gap; 3.0: back to grey, a change from white; 7.0: due
    assert kept == [0, 2.0, 3.0, 7.0]


def test_a_long_video_spreads_its_frames_over_all_of_it_and_stays_under_the_cap():
    cfg = VideoConfig(interval=4.0, max_frames=20, min_gap=0.5)
    still = Sampler(cfg, duration=3600.0)
    quiet = [t for t in range(0, 3600, 5) if still.wants(float(t), np.zeros((18, 32), np.uint8))]
    assert quiet == list(range(0, 3600, 360))  # periodic frames: half the budget, evenly
    shaky = Sampler(cfg, duration=3600.0)
    rng = np.random.default_rng(0)
    kept = [t for t in np.arange(0, 3600, 1.0) if shaky.wants(t, rng.integers(0, 256, (18, 32), dtype=np.uint8))]
    # every frame a "change": the first minutes may not spend the budget the last ones need
    assert len(kept) <= 20 and kept[-1] >= 3000 and sum(t < 600 for t in kept) <= 12


def test_shots_are_sampled_at_their_cuts_in_every_codec(library):
    folder, truth = library
    for name in truth:
        with VideoReader(str(folder / name), VideoConfig(), 64) as reader:
            times = [m.time for m in reader.moments()]
        starts = [i * SHOT for i in range(8)]
        assert [min(times, key=lambda t: abs(t - s)) for s in starts] == pytest.approx(starts, abs=0.1), (name, times)
        assert reader.size is not None


def test_keyframes_only_decoding_reads_fewer_frames_and_keeps_the_interval(library):
    folder, _ = library
    with VideoReader(str(folder / "trip.mp4"), VideoConfig(keyframes_only=True), 64) as reader:
        times = [m.time for m in reader.moments()]
    assert times[0] == 0 and all(b - a <= 2 * SHOT + 4.0 for a, b in zip(times, times[1:]))


def test_a_phone_video_recorded_sideways_is_read_upright(library, tmp_path):
    folder, _ = library
    photo = Image.open(coco_photos(28)[24]).convert("RGB").resize((96, 160))
    with VideoReader(str(folder / "phone" / "upright.mp4"), VideoConfig(), 1000) as reader:
        first = next(reader.moments()).image
        assert reader.size == (96, 160)
    assert first.size == (96, 160)
    upright = np.abs(np.asarray(first, np.int16) - np.asarray(photo, np.int16)).mean()
    sideways = np.abs(np.asarray(first.transpose(Image.Transpose.ROTATE_180), np.int16) - np.asarray(photo)).mean()
    assert upright < 8 < sideways


# -- indexing and search -------------------------------------------------------------------------------------


def test_a_video_is_one_entry_with_its_frames_beneath(indexed):
    collection, report = indexed
    assert report.added == 5 and not report.skipped
    hits = {os.path.basename(h.path): h for h in collection.browse(limit=10)}
    assert hits["trip.mp4"].duration == pytest.approx(24.0, abs=0.2) and hits["trip.mp4"].format == "mp4"
    assert hits["trip.mp4"].width == 192 and hits["trip.mp4"].height == 144
    assert hits["trip.mp4"].taken_at == 1622887200.0  # the container's creation_time, not the file's
    summer = collection.browse(limit=10, filters=imgsearch.Filters(after="2021-06", before="2021-07"))
    assert [os.path.basename(h.path) for h in summer] == ["trip.mp4"]
    assert hits["upright.mp4"].width == 96 and hits["upright.mp4"].height == 160
    assert hits["still.jpg"].duration is None and not hits["still.jpg"].is_video
    assert len(collection) == 5
    info = collection.info()
    assert info.videos == 4 and info.frames == collection._store_for().count("frames") >= 3 * 8 + 2


def test_a_still_from_a_video_finds_that_video_at_its_moment(library, indexed):
    """The issue's goal: >= 95% of stills (taken mid-shot, as screenshots are) find their video first, at a moment
    within the shot they come from."""
    folder, truth = library
    collection, _ = indexed
    right = total = 0
    for name in truth:
        for t, still in stills(folder / name, SHOT, SHOT / 2):
            best = collection.search(still, k=1)[0]
            shot_start = (t // SHOT) * SHOT
            right += os.path.basename(best.path) == name and shot_start <= best.time < shot_start + SHOT
            total += 1
    assert total == 24 and right / total >= 0.95


def test_a_video_appears_once_with_its_other_moments_and_the_photo_between(indexed, library):
    folder, truth = library
    collection, _ = indexed
    hits = collection.search(Image.open(truth["trip.mp4"][2]), k=10)
    paths = [h.path for h in hits]
    assert len(paths) == len(set(paths)) == 5  # every entry once, the photo among them
    trip = next(h for h in hits if h.path.endswith("trip.mp4"))
    assert trip.score == trip.moments[0].score >= max(m.score for m in trip.moments)
    assert [m.score for m in trip.moments] == sorted((m.score for m in trip.moments), reverse=True)
    assert 1 < len(trip.moments) <= 5
    assert all(h.moments == () for h in hits if not h.is_video)


def test_type_filters_photos_or_videos(indexed, library):
    collection, _ = indexed
    still = Image.open(library[0] / "still.jpg")
    videos = collection.search(still, k=10, filters=imgsearch.Filters(kind="video"))
    photos = collection.search(still, k=10, filters=imgsearch.Filters(kind="image"))
    assert len(videos) == 4 and all(h.is_video and h.moments for h in videos)
    assert [os.path.basename(h.path) for h in photos] == ["still.jpg"]
    with pytest.raises(imgsearch.BadInputError, match="image or video"):
        imgsearch.Filters(kind="film")


def test_a_fresh_process_finds_the_moments_from_the_saved_indexes(library, indexed, tmp_path):
    folder, truth = library
    collection, _ = indexed
    t, still = stills(folder / "party.webm", SHOT, SHOT / 2)[5]
    still.save(tmp_path / "screenshot.png")
    proc = run_cli("query", "--image", tmp_path / "screenshot.png", "--index", collection.folder, "--json", "-k", "2")
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)[0]
    assert best["path"].endswith("party.webm") and 15.0 <= best["moments"][0]["time"] < 18.0
    assert best["duration"] == pytest.approx(24.0, abs=0.2)
    plain = run_cli("query", "--image", tmp_path / "screenshot.png", "--index", collection.folder, "-k", "1")
    assert re.fullmatch(r"[\d.]+\t\S+party\.webm\tat 0:1[567]( \(also [\d:, ]+\))?\n", plain.stdout), plain.stdout


# -- files that are not videos, changed, moved, copied ---------------------------------------------------------


def _garbage_library(folder, photos):
    write_video(folder / "good.mp4", [(photos[0], 2.0), (photos[1], 2.0)])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(os.urandom(20_000))
    whole = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    _audio_only(folder / "voice.mp4")


def _audio_only(path):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_files_that_are_not_whole_videos_are_skipped_with_reasons_and_the_run_goes_on(tmp_path, tiny_model):
    photos = coco_photos(2)
    _garbage_library(tmp_path / "lib", photos)
    with imgsearch.open(tmp_path / "c", model=tiny_model) as collection:
        report = collection.index_folder(tmp_path / "lib")
    reasons = {os.path.basename(s.path): s.reason for s in report.skipped}
    assert report.added == 1 and set(reasons) == {"empty.mp4", "garbage.mp4", "truncated.mp4", "voice.mp4"}
    assert "empty file" in reasons["empty.mp4"]
    assert "not a video FFmpeg can read" in reasons["garbage.mp4"]
    assert "not a video FFmpeg can read" in reasons["truncated.mp4"]  # its index (moov) was at the end
    assert "no video stream" in reasons["voice.mp4"] and "audio" in reasons["voice.mp4"]


def test_a_video_cut_short_after_its_index_is_refused_as_truncated(tmp_path):
    """A download or copy stopped part-way: the container still says 8 s, the frames stop at about half."""
    photos = coco_photos(4)
    path = write_video(tmp_path / "fast.mp4", [(p, 2.0) for p in photos], movflags="faststart")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with VideoReader(str(path), VideoConfig(), 64) as reader, pytest.raises(VideoSkipped, match="truncated"):
        list(reader.moments())


def test_a_video_changed_in_place_moved_copied_and_deleted_follows_the_rules(tmp_path, tiny_model):
    photos = coco_photos(6)
    lib = tmp_path / "lib"
    write_video(lib / "a.mp4", [(photos[0], 3.0), (photos[1], 3.0)])
    with imgsearch.open(tmp_path / "c", model=tiny_model) as collection:
        collection.index_folder(lib)
        store = collection._store_for()
        (first,) = collection.browse(limit=5)
        before = store.frames_of([first.id])[first.id]

        write_video(lib / "a.mp4", [(photos[2], 3.0), (photos[3], 3.0), (photos[4], 3.0)])  # changed in place
        report = collection.index_folder(lib)
        (changed,) = collection.browse(limit=5)
        after = store.frames_of([changed.id])[changed.id]
        assert report.updated == 1 and changed.id == first.id and len(after.times) == 3 != len(before.times)
        assert store.count("frames") == 3
        assert collection.search(Image.open(photos[4]), k=1)[0].time == pytest.approx(6.0, abs=0.1)

        os.rename(lib / "a.mp4", lib / "renamed.mp4")
        report = collection.index_folder(lib)
        (moved,) = collection.browse(limit=5)
        assert report.moved == 1 and moved.id == first.id and moved.path.endswith("renamed.mp4")
        assert store.count("frames") == 3

        shutil.copy(lib / "renamed.mp4", lib / "copy.mp4")
        report = collection.index_folder(lib)
        assert report.reused == 1 and store.count("frames") == 6
        copy = next(h for h in collection.browse(limit=5) if h.path.endswith("copy.mp4"))
        assert np.array_equal(store.frames_of([copy.id])[copy.id].vectors, after.vectors)

        os.remove(lib / "renamed.mp4")
        os.remove(lib / "copy.mp4")
        write_video(lib / "other.mp4", [(photos[5], 2.0)])
        report = collection.index_folder(lib)
        assert report.removed == 2 and store.count("frames") == 1
        hits = collection.search(Image.open(photos[0]), k=5)
        assert [os.path.basename(h.path) for h in hits] == ["other.mp4"]

        shutil.rmtree(lib)  # a folder gone for good: prune drops its video with every frame
        assert collection.prune() == [str(lib / "other.mp4")]
        assert store.count("images") == store.count("frames") == 0


# -- the server and the gallery --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_videos(tmp_path_factory, tiny_embedder, serve_env):
    from conftest import Served

    root = tmp_path_factory.mktemp("served")
    photos = coco_photos(6, 40)
    write_video(root / "lib" / "walk.webm", [(p, SHOT) for p in photos[:4]], fps=12, size=(192, 144))
    shutil.copy(photos[5], root / "lib" / "photo.jpg")
    with imgsearch.open(root / "coll", embedder=tiny_embedder) as collection:
        collection.index_folder(root / "lib")
    served = Served(root / "coll", "--token", "video-t0ken", env=serve_env)
    yield served, root / "lib"
    served.stop()


AUTH = {"Authorization": "Bearer video-t0ken"}


def test_the_server_finds_the_moment_shows_it_and_plays_the_video_in_ranges(served_videos, tmp_path):
    served, lib = served_videos
    t, still = stills(lib / "walk.webm", SHOT, SHOT / 2)[2]
    still.save(tmp_path / "still.png")
    status, found = served.json("/api/search", body=(tmp_path / "still.png").read_bytes(), headers=AUTH)
    assert status == 200, found
    best = found["results"][0]
    assert best["path"].endswith("walk.webm") and 6.0 <= best["moments"][0]["time"] < 9.0
    video_id = best["id"]

    status, headers, at_start = served.get(f"/api/images/{video_id}/thumbnail", {"size": 128}, headers=AUTH)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    _, _, at_moment = served.get(f"/api/images/{video_id}/thumbnail", {"size": 128, "t": 7.0}, headers=AUTH)
    assert at_moment[:2] == b"\xff\xd8" and at_moment != at_start  # another shot
    status, found, _ = served.get(f"/api/images/{video_id}/thumbnail", {"t": 500}, headers=AUTH)
    assert status == 400

    whole = (lib / "walk.webm").read_bytes()
    status, headers, part = served.get(f"/api/images/{video_id}/file", headers={**AUTH, "Range": "bytes=100-1099"})
    assert status == 206 and part == whole[100:1100] and headers["content-type"] == "video/webm"
    assert headers["content-range"] == f"bytes 100-1099/{len(whole)}" and headers["accept-ranges"] == "bytes"
    assert served.get(f"/api/images/{video_id}/file")[0] == 401  # the token rules of every photo

    changed, indexed = lib / "walk.webm", (lib / "walk.webm").stat()
    os.utime(changed, ns=(indexed.st_atime_ns, indexed.st_mtime_ns + 10**9))
    try:
        status, _, body = served.get(f"/api/images/{video_id}/file", headers=AUTH)
        assert status == 404 and b"has changed or gone" in body
        assert served.get(f"/api/images/{video_id}/thumbnail", {"t": 3.0}, headers=AUTH)[0] == 404
    finally:  # as indexed again, for the gallery's test
        os.utime(changed, ns=(indexed.st_atime_ns, indexed.st_mtime_ns))


def test_the_gallery_shows_a_video_at_its_moment_and_plays_it_from_there(served_videos, tmp_path):
    from test_gallery import _chromium

    playwright = pytest.importorskip("playwright.sync_api")
    served, lib = served_videos
    _, still = stills(lib / "walk.webm", SHOT, SHOT / 2)[3]
    still.save(tmp_path / "still.png")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(served.url + "/?token=video-t0ken")
        page.wait_for_selector("#grid .tile")
        page.set_input_files("#upload", str(tmp_path / "still.png"))
        page.wait_for_function("document.querySelector('#grid .tile.video .badge')?.textContent === '▶ 0:09'")
        tile = page.locator("#grid .tile").first
        assert "walk.webm" in tile.get_attribute("title")
        assert "t=9" in tile.locator("img").get_attribute("src")
        page.wait_for_function("document.querySelector('#grid .tile img').naturalWidth > 0")
        tile.click()
        page.wait_for_selector("#viewer[open]")
        assert page.locator("#large").is_hidden() and page.locator("#moments li").count() >= 1
        page.wait_for_function("document.querySelector('#player').readyState >= 1")  # the video is playable
        page.wait_for_function("Math.abs(document.querySelector('#player').currentTime - 9) < 0.5")
        page.locator("#moments li button").last.click()
        last = float(page.locator("#moments li button").last.inner_text().split(" ")[0].split(":")[1])
        page.wait_for_function(f"Math.abs(document.querySelector('#player').currentTime - {last}) < 1")
        assert "Length" in page.inner_text("#meta") and errors == []
        browser.close()


def test_dupes_finds_a_video_stored_twice_and_re_encoded_but_never_a_photo_of_it(tmp_path, tiny_model):
    photos = coco_photos(3, 60)
    lib = tmp_path / "lib"
    shots = [(p, SHOT) for p in photos]
    write_video(lib / "clip.mp4", shots, size=(192, 144))
    write_video(lib / "clip-small.webm", shots, size=(128, 96), fps=12)  # the same clip, re-encoded
    (lib / "backup").mkdir()
    shutil.copy(lib / "clip.mp4", lib / "backup" / "clip.mp4")
    write_video(lib / "other.mp4", [(p, SHOT) for p in coco_photos(3, 70)])
    shutil.copy(photos[0], lib / "photo.jpg")
    write_video(lib / "held.mp4", [(photos[0], 4.0)])  # a still held: as close to the photo as a video gets
    with imgsearch.open(tmp_path / "c", model=tiny_model) as collection:
        collection.index_folder(lib)
        exact = collection.duplicates(threshold=None)
        assert [sorted(os.path.relpath(i.path, lib) for i in g.images) for g in exact] == [
            ["backup/clip.mp4", "clip.mp4"]
        ]
        # the tiny random model puts unrelated pictures at 0.98-0.995 (a trained one near 0.5): its threshold is higher
        near = collection.duplicates(threshold=0.998)
        grouped = [sorted(os.path.relpath(i.path, lib) for i in g.images) for g in near]
        assert grouped == [["backup/clip.mp4", "clip-small.webm", "clip.mp4"]]
        loose = [sorted(os.path.relpath(i.path, lib) for i in g.images) for g in collection.duplicates(0.99)]
        assert loose and not any("photo.jpg" in g for g in loose)  # 0.992 to held.mp4, yet a photo is not a video


def test_a_damaged_frames_index_is_found_by_check_repaired_and_never_believed(tmp_path, tiny_model):
    photos = coco_photos(4, 50)
    write_video(tmp_path / "lib" / "a.mp4", [(p, SHOT) for p in photos])
    with imgsearch.open(tmp_path / "c", model=tiny_model) as collection:
        collection.index_folder(tmp_path / "lib")
        _, still = stills(tmp_path / "lib" / "a.mp4", SHOT, SHOT / 2)[2]
        assert 6.0 <= collection.search(still, k=1)[0].time < 9.0
    saved = tmp_path / "c" / "frames.faiss"
    data = bytearray(saved.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    saved.write_bytes(bytes(data))
    with imgsearch.open(tmp_path / "c") as collection:
        report = collection.check()
        bad = [f for f in report.findings if f.part == "frames.faiss"]
        assert bad and not bad[0].ok
        assert 6.0 <= collection.search(still, k=1)[0].time < 9.0  # rebuilt from the store, not believed
        repaired = collection.check(repair=True)
        assert all(f.ok or f.repaired for f in repaired.findings if f.part.startswith("frames"))
    with imgsearch.open(tmp_path / "c") as collection:
        assert all(f.ok for f in collection.check().findings if f.part.startswith("frames"))


@pytest.mark.e2e
def test_kill_9_mid_run_never_leaves_a_video_half_stored_and_the_rerun_completes(tmp_path, tiny_model):
    """A video's row and its frames are one transaction: whatever the moment of the kill, every stored video has
    all its frames, no frame lacks its video, and the next run adds exactly the videos that were not stored."""
    import sqlite3
    import subprocess
    import sys

    from test_resume import _kill_once_rows_exceed

    lib, coll = tmp_path / "lib", tmp_path / "coll"
    photos = coco_photos(24)
    for n in range(12):
        write_video(lib / f"v{n:02d}.mp4", [(photos[2 * n], 1.0), (photos[2 * n + 1], 1.0)], size=(96, 64))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "index", str(lib), "--index", str(coll), *TINY, "--batch-size", "1"]
        + ["--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_once_rows_exceed(proc, coll / "imgsearch.db", floor=2)
    with sqlite3.connect(coll / "imgsearch.db") as db:
        per_video = dict(
            db.execute("SELECT i.id, count(f.id) FROM images i LEFT JOIN frames f ON f.image_id = i.id GROUP BY i.id")
        )
        orphans = db.execute("SELECT count(*) FROM frames WHERE image_id NOT IN (SELECT id FROM images)").fetchone()[0]
    db.close()
    assert orphans == 0 and all(count == 2 for count in per_video.values()), per_video
    assert killed or proc.returncode == 0
    with imgsearch.open(coll) as collection:
        report = collection.index_folder(lib)
        assert (report.added, report.unchanged, report.skipped) == (12 - len(per_video), len(per_video), [])
        assert len(collection) == 12 and collection._store_for().count("frames") == 24
        for n in (0, 5, 11):
            _, still = stills(lib / f"v{n:02d}.mp4", 1.0, 0.5)[1]
            best = collection.search(still, k=1)[0]
            assert best.path.endswith(f"v{n:02d}.mp4") and best.time == pytest.approx(1.0, abs=0.1)
