"""``tools.chaos`` run from a test: the verifying load, real SIGKILLs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout


def chaos(kill: str, count: int, every: str) -> dict[str, object]:
    """``tools.chaos`` with 20 clients, 8 requests in flight each, each
    request written in up to 3 pieces (kills land in the middle of frames);
    payloads carry the connection, a sequence number and a checksum.  Its
    report, checked for nothing lost, repeated, reordered or corrupted."""
    with tempfile.TemporaryDirectory(prefix="stcp-test-chaos-") as folder:
        out = subprocess.run(
            [sys.executable, "-m", "tools.chaos", "--kill", kill, "--count", str(count)]
            + ["--every", every, "--conns", "20", "--window", "8", "--seconds", "90", "--json"]
            + ["--pieces", "3", "--seed", str(random.randrange(1 << 30))]
            + ["--log", os.path.join(folder, "server.log")],  # removed with the folder
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=150,
        )
    text = out.stdout
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    problems = {k: report[k] for k in ("lost", "duplicated", "reordered", "corrupted")}
    assert problems == dict.fromkeys(problems, 0), (report, out.stderr[-2000:])
    assert report["faults"] == count and report["replies"] > 1000, report  # type: ignore[operator]
    return report  # type: ignore[no-any-return]
