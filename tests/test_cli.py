"""The real `imgsearch` command in a subprocess: output, JSON, exit codes, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL, run_cli, write_image

pytestmark = pytest.mark.e2e  # real processes, browsers or clusters: the end-to-end tier

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


def test_the_collection_folder_is_named_collection_and_its_old_name_still_works(tmp_path):
    """0.1 called the collection folder `--index`, one of five things "index" meant; `--collection` is its name now
    and the old one is kept, so scripts written for 0.1 keep working."""
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", 1)
    coll = tmp_path / "coll"
    run("index", photos, "--collection", coll, *TINY, "--quiet")
    about = json.loads(run("info", "--index", coll, "--json").stdout)
    assert about["images"] == 1 and Path(about["path"]) == coll
    assert "--collection" in run("query", "--help").stdout


def test_queries_that_find_nothing_or_fewer_say_why(built, tmp_path):
    """0.1 answered `--in` a folder the collection does not hold, and `-k 5000` on 10 images, without a word; and
    its hint for a missing --image file was Python's ("call search_text")."""
    coll, photos = built
    missing = run("query", "--image", tmp_path / "nothere.jpg", "--index", coll, ok=False)
    assert missing.returncode == 1 and "query image not found" in missing.stderr
    assert "search_text" not in missing.stderr and "check the file's path" in missing.stderr
    elsewhere = run("query", "a dog", "--index", coll, "--in", tmp_path / "Pictures" / "2023", ok=False)
    assert elsewhere.returncode == 1, elsewhere.stderr
    assert f"is under {tmp_path / 'Pictures' / '2023'}" in elsewhere.stderr and str(photos) in elsewhere.stderr
    every = run("query", "a dog", "--index", coll, "-k", "5000")
    assert len(every.stdout.splitlines()) == 10
    assert "10 results, fewer than --top 5000: the collection holds 10 images, and all are shown" in every.stderr
    paths = run("query", "a dog", "--index", coll, "-k", "3", "--paths").stdout.splitlines()
    assert len(paths) == 3 and all(Path(p).is_relative_to(photos) for p in paths)  # rclip's -f: paths alone, for xargs
    assert run("query", "a dog", "--index", coll, "-k", "3", "-f").stdout.splitlines() == paths


def test_a_first_run_that_fails_leaves_nothing_behind(tmp_path, photo_dir):
    """0.1 left an empty imgsearch.db and .lock, after which `info` printed "None dimensions" and `dupes`,
    `skipped`, `prune` and `texts clear` reported success on a collection that was never made."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    coll = tmp_path / "data" / "imgsearch" / "default"
    failed = run("index", photo_dir, "--collection", coll, "--model", TINY_MODEL, "--pretrained", broken, ok=False)
    assert failed.returncode == 1 and "error" in failed.stderr
    assert not (tmp_path / "data").exists()  # not the collection, nor the folders made for it
    for command in (["info"], ["dupes"], ["skipped"], ["prune"], ["texts", "clear"]):
        again = run(*command, "--collection", coll, ok=False)
        assert again.returncode == 1 and "no collection at" in again.stderr, command
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no photos here")
    nothing = run("index", empty, "--collection", coll, *TINY, ok=False)
    assert nothing.returncode == 1 and f"no image or video files under {empty}" in nothing.stderr
    assert not (tmp_path / "data").exists()
    from imgsearch.storage.store import Store

    (tmp_path / "left").mkdir()
    Store(tmp_path / "left" / "imgsearch.db").close()  # what 0.1 left behind
    about = run("info", "--collection", tmp_path / "left").stdout
    assert "nothing embedded yet" in about and "None" not in about
    bare = run("index", ok=False)
    assert bare.returncode == 2 and "give the folder to index, e.g. `imgsearch index ~/Pictures`" in bare.stderr
