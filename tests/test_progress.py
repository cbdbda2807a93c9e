"""The command line's output, in-process: the progress bar and the index summary (the CLI as a process is
tests/test_cli.py, in the end-to-end tier)."""

import sys

from conftest import write_image


def test_the_summary_rate_is_the_embeddings_own_and_the_model_load_is_said_apart(tmp_path, tiny_model, capsys):
    """0.1 divided by the whole run: 80 photos after an 84 s first export read "0.8 images/s" when the model
    embedded 5 a second."""
    import imgsearch
    from imgsearch.cli.indexing import _print_index_report
    from imgsearch.results import IndexReport

    _print_index_report(IndexReport("/photos", added=80, seconds=100.0, model_seconds=84.0, embed_seconds=16.0))
    out = capsys.readouterr().out
    assert "(5.0 images/s embedding" in out and "model ready in 84.0s" in out and "in 100.0s" in out

    for i in range(6):
        write_image(tmp_path / "photos" / f"p{i}.png", i)
    calls: list[tuple[int, str | None]] = []
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        report = engine.index_folder(
            tmp_path / "photos", progress=lambda done, total, stage=None: calls.append((done, stage))
        )
    assert report.embedded == 6 and report.model_seconds > 0 and report.embed_seconds > 0
    assert report.model_seconds + report.embed_seconds <= report.seconds
    stages = [stage for _, stage in calls]
    assert stages.index("loading model") < stages.index("embedding")
    assert calls[stages.index("embedding")][0] == 0  # the bar's clock restarts before the first batch, not after


def test_a_stage_with_nothing_to_count_still_shows_its_time_passing(monkeypatch):
    """0.1's bar sat at `loading model: 0%| 0/956 [00:00<?]` through an 85 s first export: it looked frozen."""
    import io
    import time

    from imgsearch.cli import common as cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli.progress_bar("scanning", "img", tick=0.05) as progress:
        progress(0, 10, "loading model")  # and nothing more, as while a model loads
        deadline = time.monotonic() + 30  # the elapsed time is the wall clock's: wait until it reads 00:01
        while "00:01" not in terminal.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    drawn = terminal.getvalue()
    assert "loading model" in drawn and "0/10 [00:01" in drawn


def test_a_first_run_shows_each_stage_of_loading_and_texts_add_shows_its_own(tmp_path, tiny_model, monkeypatch):
    """0.1's first index sat on `loading model: 0%` through a one-time export of ~85 s, and `texts add` showed
    nothing for about 60 s."""
    import imgsearch

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))  # no export yet: this run makes it
    for i in range(3):
        write_image(tmp_path / "photos" / f"p{i}.png", i)
    stages: list[str | None] = []
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(tmp_path / "photos", progress=lambda done, total, stage=None: stages.append(stage))
    shown = list(dict.fromkeys(stages))  # in order, each once
    assert shown[:3] == ["loading model", "exporting the model for the CPU (once per model)", shown[2]]
    assert shown[2].startswith("checking the export (") and shown[2].endswith(" MB, once per model)")
    assert shown[3:] == ["embedding"]
    texts: list[tuple[int, str | None]] = []
    with imgsearch.open(tmp_path / "coll2", model=tiny_model) as engine:
        engine.add_texts(["a dog", "a cat"], progress=lambda done, total, stage=None: texts.append((done, stage)))
    assert texts[0] == (0, "loading model") and texts[-1] == (2, "embedding")


def test_a_run_in_progress_is_seen_by_other_handles_only_while_it_runs(tmp_path, tiny_model, photo_dir):
    """What `imgsearch info` and the gallery show of a run in another process: its folder, stage and counts."""
    import os

    import imgsearch
    from imgsearch.config import IndexingConfig
    from imgsearch.storage.activity import ACTIVITY_NAME

    coll = tmp_path / "coll"
    reader = imgsearch.open(coll)
    seen = []

    def progress(done, total, stage="indexing"):
        if stage == "embedding":
            seen.append(reader.activity())

    with imgsearch.open(coll, model=tiny_model) as engine:
        engine.index_folder(photo_dir, IndexingConfig(batch_size=4, workers=0), progress)
    first = seen[0]
    assert (first["folder"], first["stage"], first["done"], first["total"]) == (
        str(photo_dir.resolve()),
        "embedding",
        0,
        10,
    )
    assert first["pid"] == os.getpid() and first["updated"] >= first["started"]
    assert seen[-1]["done"] == 10  # the last batch is always written, however soon after the one before
    assert reader.activity() is None and reader.info().indexing is None
    assert not (coll / ACTIVITY_NAME).exists()
    reader.close()


def test_an_activity_file_no_running_writer_vouches_for_is_not_believed(tmp_path, engine, photo_dir):
    """A run killed with -9 leaves its file; a damaged one may be anything: neither is shown as a run."""
    import json
    import time

    from imgsearch.storage.activity import ACTIVITY_NAME
    from imgsearch.storage.locking import LOCK_NAME, writer_lock

    engine.index_folder(photo_dir)
    left = {"folder": "/photos", "stage": "embedding", "done": 3, "total": 9, "started": time.time(),
            "updated": time.time(), "pid": 999999}  # fmt: skip
    (engine.folder / ACTIVITY_NAME).write_text(json.dumps(left))
    assert engine.activity() is None  # the lock is free: no one is running
    with writer_lock(engine.folder / LOCK_NAME):
        assert engine.activity()["done"] == 3  # the same file, vouched for by a writer holding the lock
        for damaged in ("{", "[]", json.dumps({**left, "done": "three"}), json.dumps({"stage": "x"})):
            (engine.folder / ACTIVITY_NAME).write_text(damaged)
            assert engine.activity() is None, damaged
    engine.index_folder(photo_dir)  # a run replaces the file and removes it when it ends
    assert not (engine.folder / ACTIVITY_NAME).exists()
