"""Recorded transcripts of the tutorial steps, and how runs are compared.

A transcript (``transcripts/STEP.txt``) is what ``python -m steps.STEP``
printed, first line the command (``$ python -m steps.STEP``), with what
varies from run to run masked: process ids, System V keys, TCP ports and the
number of partial sends (``MASKS``).  The test masks a fresh run the same way
and compares it line by line.

After changing what a step says, record it again and read the diff::

    python tests/steps/transcript.py step03_two_processes   # or: all
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTS = Path(__file__).resolve().parent / "transcripts"
STEPS = sorted(p.stem for p in (ROOT / "steps").glob("step[0-9][0-9]_*.py"))

MASKS = [
    (re.compile(r"\bpid \d+"), "pid <PID>"),
    (re.compile(r"\b0x[0-9a-f]{8}\b"), "0x<KEY>"),
    (re.compile(r"127\.0\.0\.(\d+):\d+"), r"127.0.0.\1:<PORT>"),  # step 11: .2 and .3 too
    (re.compile(r"\(\d+ times send\(\)"), "(<N> times send()"),  # step 02: how the kernel split
]


def command(step: str) -> list[str]:
    return [sys.executable, "-m", f"steps.{step}"]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def run_step(step: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(step), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def render(step: str, stdout: str) -> str:
    """The transcript form of a run: the command, then the masked output."""
    return f"$ python -m steps.{step}\n{mask(stdout)}"


def path(step: str) -> Path:
    return TRANSCRIPTS / f"{step}.txt"


def record(step: str) -> None:
    result = run_step(step)
    if result.returncode != 0:
        raise SystemExit(f"{step} exited with {result.returncode}:\n{result.stderr}")
    TRANSCRIPTS.mkdir(exist_ok=True)
    path(step).write_text(render(step, result.stdout))
    print(f"recorded {path(step).relative_to(ROOT)}")


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["all"]
    for step in STEPS if wanted == ["all"] else wanted:
        if step not in STEPS:
            raise SystemExit(f"no step {step!r}; the steps are: {', '.join(STEPS)}")
        record(step)
