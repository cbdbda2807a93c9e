"""Folder trees with every case the scan decides, for the tests that compare two ways of walking one."""

import os
from pathlib import Path

RICH_EXCLUDES = ("@eaDir", "Trash", "raw/*", "*.tmp.jpg", "2024/02")


def rich_tree(tmp_path: Path) -> Path:
    """``photos`` under tmp_path: nesting, hidden and excluded folders and files, links to folders inside and outside
    and a link cycle, links to files inside and outside, a dangling link, a hard link (c.png and sub/hard-c.png), a
    FIFO, RAW files with and without their camera JPEG, a name that is not UTF-8, dotted and upper-case names,
    videos. Returns its path."""
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    files = [
        "a.jpg", "B.JPG", "c.png", "d.tiff", "movie.MP4", "clip.mov", "notes.txt", "..jpg", ".hidden.jpg", "x.jpg.bak",
        "IMG_1.CR2", "IMG_1.JPG", "IMG_2.dng", "IMG_3.nef", "img_3.heic", "z.webp",
        "2024/01/p1.jpg", "2024/01/p2.gif", "2024/02/p3.bmp", "2024/02/raw.cr3", "2024/02/.cache/t.jpg",
        "@eaDir/thumb.jpg", "Trash/old.jpg", "sub/Trash/deep.jpg", "sub/keep.jpg", "sub/skip.tmp.jpg",
        "sub/deeper/x.avif", "raw/a.jpg", "raw/inner/b.jpg", ".git/objects/c.jpg",
    ]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode() * 3)
    (outside / "o").mkdir(parents=True)
    (outside / "o" / "far.jpg").write_bytes(b"far")
    (outside / "single.png").write_bytes(b"single")
    os.symlink(root / "2024", root / "0-link-to-2024")  # walked first, but under its own path: left to it
    os.symlink(outside / "o", root / "sub" / "outside")  # followed
    os.symlink(root / "sub", root / "sub" / "deeper" / "cycle")  # a cycle
    os.symlink(root / "a.jpg", root / "link-to-a.jpg")  # left to its target
    os.symlink(outside / "single.png", root / "single-link.png")  # indexed under the link's path
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    os.link(root / "c.png", root / "sub" / "hard-c.png")
    os.mkfifo(root / "fifo.jpg")
    os.mkdir(root / "folder.jpg")  # a folder with an image's name is a folder
    (root / "folder.jpg" / "in.png").write_bytes(b"in")
    bad = os.fsencode(str(root)) + b"/caf\xe9.jpg"
    with open(bad, "wb") as fh:
        fh.write(b"latin-1")
    (root / "caf\u00e9 ok.jpg").write_bytes(b"utf-8")

    return root
