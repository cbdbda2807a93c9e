"""The real `imgsearch` command in a subprocess: output, JSON, exit codes, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL, run_cli, write_image

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


def run(*args, ok=True, env_index=None):
    proc = run_cli(*args, env={"IMGSEARCH_INDEX": str(env_index)} if env_index else None)
    if ok:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def built(tmp_path, photo_dir):
    coll = tmp_path / "coll"
    proc = run("index", photo_dir, "--index", coll, *TINY, "--batch-size", "4")
    assert "10 added" in proc.stdout and "0 skipped" in proc.stdout
    return coll, photo_dir


def test_index_query_info_roundtrip(built, tmp_path):
    coll, photos = built
    text_hits = json.loads(run("query", "a red car", "--index", coll, "-k", "3", "--json").stdout)
    assert len(text_hits) == 3 and {"id", "path", "score"} <= set(text_hits[0])
    target = photos / "img0.jpg"
    lines = run("query", "--image", target, "--index", coll, "-k", "2").stdout.splitlines()
    score, path = lines[0].split("\t")
    assert path == str(target) and float(score) > 0.999 and len(lines) == 2

    captions = tmp_path / "captions.txt"
    captions.write_text("a dog on a beach\n\na red car\nthe night sky\n", encoding="utf-8")
    assert "added 3 texts" in run("texts", "add", captions, "--index", coll).stdout
    texts = json.loads(run("query", "--image", target, "--texts", "--index", coll, "--json").stdout)
    assert sorted(t["text"] for t in texts) == ["a dog on a beach", "a red car", "the night sky"]

    info = json.loads(run("info", "--json", env_index=coll).stdout)  # collection from $IMGSEARCH_INDEX
    assert (info["model"], info["images"], info["texts"], info["image_index"]) == (TINY_MODEL, 10, 3, "flat")
    again = run("index", photos, "--index", coll, "--json").stdout
    assert json.loads(again)["unchanged"] == 10


def test_user_errors_are_one_line_with_non_zero_exit(built, tmp_path):
    coll, photos = built
    cases = [
        (("query", "x", "--index", tmp_path / "missing"), "no collection at"),
        (("query", "--image", tmp_path / "nope.jpg", "--index", coll), "query image not found"),
        (("query", "--index", coll), "give a TEXT query, --image PATH, or both"),
        (("index", photos, "--index", coll, "--model", "ViT-B-32"), "was built with imgsearch-tiny"),
        (("index", tmp_path / "nowhere", "--index", coll), "not a folder"),
        (("query", "--image", photos / "img0.jpg", "--texts", "--index", coll), "no texts"),
    ]
    for args, message in cases:
        proc = run(*args, ok=False)
        assert proc.returncode in (1, 2), args
        assert message in proc.stderr, (args, proc.stderr)
        assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1


def _commands():
    from typer.main import get_command

    from imgsearch.cli import app

    root = get_command(app)
    for name, cmd in root.commands.items():
        yield [name]
        yield from ([name, sub] for sub in getattr(cmd, "commands", {}))


def test_every_command_has_help_and_is_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = list(_commands())
    assert ["eval"] in commands and ["texts", "add"] in commands
    for command in [[]] + commands:
        out = run(*command, "--help").stdout
        assert "Usage:" in out and len(out) > 200, command
        assert f"imgsearch {' '.join(command)}" in readme, f"README does not show `imgsearch {' '.join(command)}`"


def test_version_and_python_dash_m():
    import sys

    import imgsearch

    for cmd in (["-m", "imgsearch", "--version"], ["-m", "imgsearch.cli", "--version"]):
        out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == f"imgsearch {imgsearch.__version__}", out
    help_out = subprocess.run([sys.executable, "-m", "imgsearch", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "index" in help_out.stdout and "--version" in help_out.stdout


def test_an_error_before_any_work_prints_no_progress_bar_on_a_terminal(tmp_path):
    """On a real terminal (a pty), `index /nonexistent` prints the error alone: no empty bar, no blank line."""
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "index", str(tmp_path / "nonexistent"), "--index", str(tmp_path / "c")],
        stdout=follower,
        stderr=follower,
        timeout=120,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    text = out.decode()
    assert proc.returncode != 0
    assert text.startswith("imgsearch: error: not a folder"), repr(text)
    assert "img/s" not in text and "0img" not in text


def test_the_summary_rate_is_the_embeddings_own_and_the_model_load_is_said_apart(tmp_path, tiny_model, capsys):
    """0.1 divided by the whole run: 80 photos after an 84 s first export read "0.8 images/s" when the model
    embedded 5 a second."""
    import imgsearch
    from imgsearch.cli import _print_index_report
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

    from imgsearch import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli._progress_bar("scanning", "img", tick=0.05) as progress:
        progress(0, 10, "loading model")  # and nothing more, as while a model loads
        deadline = time.monotonic() + 30  # the elapsed time is the wall clock's: wait until it reads 00:01
        while "00:01" not in terminal.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    drawn = terminal.getvalue()
    assert "loading model" in drawn and "0/10 [00:01" in drawn
