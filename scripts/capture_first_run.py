"""What a person sees during a first `imgsearch index`: the progress line as a terminal shows it, captured in a pty.

Runs the real command in a pseudo-terminal (120x30, as tmux would give it), with a fresh export cache so that the
model's one-time export happens, and prints:
- every stage shown, when it appeared, and a sample of the line;
- the longest time the visible line did not change (a bar that looks frozen);
- the time left the bar showed once 10% of the images were embedded, against the time the rest actually took.

    .venv/bin/python scripts/capture_first_run.py ../shared/data/coco_mini --model ViT-B-32 --pretrained none
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

LINE = re.compile(r"([^\r\n]*?): +(\d+)%\|[^|]*\| *(\d+)/(\d+) \[([0-9:]+)<([0-9:?]+)")


def seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def capture(command: list[str], env: dict) -> list[tuple[float, str]]:
    """(seconds since start, the line as last drawn) at every redraw."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(command[0], command, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    started, buffer, frames = time.monotonic(), "", []
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536).decode("utf-8", "replace")
        except OSError:
            break
        if not chunk:
            break
        buffer += chunk
        *done, buffer = re.split(r"[\r\n]", buffer)
        now = time.monotonic() - started
        frames += [(now, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", d)) for d in done if d.strip()]
    os.waitpid(pid, 0)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, IMGSEARCH_CACHE=str(Path(work) / "cache"), COLUMNS="120", LINES="30")
        command = [sys.executable, "-m", "imgsearch", "index", args.folder, "--collection", str(Path(work) / "c")]
        frames = capture([*command, "--model", args.model, "--pretrained", args.pretrained], env)
    bars = [(t, m) for t, line in frames if (m := LINE.search(line))]
    print(f"{len(frames)} redraws over {frames[-1][0]:.1f} s; the summary: {frames[-1][1].strip()}")
    seen: dict[str, float] = {}
    for t, m in bars:
        stage = m.group(1).strip()
        if stage not in seen:
            seen[stage] = t
            print(f"  {t:6.1f} s  {stage:55.55}  {m.group(0)[:60]}")
    still = max((b[0] - a[0], a[0]) for a, b in zip(frames, frames[1:]))
    print(f"longest time without a redraw: {still[0]:.1f} s (from {still[1]:.1f} s)")
    embedding = [(t, m) for t, m in bars if m.group(1).strip() == "embedding"]
    total = int(embedding[-1][1].group(4)) if embedding else 0
    tenth = next(((t, m) for t, m in embedding if int(m.group(3)) >= total / 10 and seconds(m.group(6))), None)
    if tenth is not None:
        shown, actual = seconds(tenth[1].group(6)), embedding[-1][0] - tenth[0]
        print(
            f"at {int(tenth[1].group(3))}/{total} (10%) the bar said {shown:.0f} s left; the rest took {actual:.1f} s "
            f"({(shown or 0) / actual - 1:+.0%})"
        )


if __name__ == "__main__":
    main()
