"""The C load generator (``tools/loadgen.c``), built and run for ``tools.bench_server``.

``built()`` compiles it with the system's C compiler into a temporary
folder that is removed afterwards (nothing is left behind, nothing is
cached); ``run(binary, ...)`` drives one server with it and returns the
same figures as the Python load clients.  The generator checks every reply
(length, number, bytes) and fails the run on the first wrong one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.c")


class NoCompiler(RuntimeError):
    pass


@contextmanager
def built() -> Iterator[str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NoCompiler(
            "--load c needs a C compiler (cc or gcc, or set CC): install one "
            "(apt install gcc) or use --load python"
        )
    with tempfile.TemporaryDirectory(prefix="stcp-loadgen-") as folder:
        binary = os.path.join(folder, "loadgen")
        done = subprocess.run(
            [cc, "-O2", "-o", binary, str(SOURCE)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise NoCompiler(f"{cc} could not build {SOURCE}:\n{done.stderr}")
        yield binary


def parse(line: str) -> dict[str, float]:
    """``count=N p50_us=X p99_us=Y cpu_s=Z`` -> its figures."""
    fields = dict(part.split("=", 1) for part in line.split())
    try:
        return {k: float(fields[k]) for k in ("count", "p50_us", "p99_us", "cpu_s")}
    except (KeyError, ValueError):
        raise ValueError(f"the load generator printed {line!r}") from None


def run(
    binary: str, port: int, conns: int, inflight: int, size: int, warmup: float, seconds: float
) -> dict[str, float]:
    argv = [binary, str(port), str(conns), str(inflight), str(size), str(warmup), str(seconds)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=warmup + seconds + 30, check=False
    )
    if done.returncode:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr.strip()}")
    figures = parse(done.stdout.strip().splitlines()[-1])
    return {
        "rps": figures["count"] / seconds,
        "p50": figures["p50_us"],
        "p99": figures["p99_us"],
        "client_cores": figures["cpu_s"] / seconds,
    }
