"""Every tutorial step runs, says what its transcript says, and leaves nothing.

``test_step_transcript`` runs ``python -m steps.STEP`` and compares its masked
output with ``transcripts/STEP.txt`` (see ``transcript.py``; the first line
of a transcript is the command).  ``test_step_interrupted`` presses Ctrl-C
(SIGINT to the step's whole process group, as a terminal does) in the middle
of the demo and checks that the step says so, exits with 130 and leaves no
process, no segment and no listening port behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import sysv_ipc
import transcript

from server.ipc.semlock import pop_lock_key

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("step", transcript.STEPS)
def test_step_transcript(step: str) -> None:
    expected = transcript.path(step).read_text()
    first = expected.splitlines()[0]
    assert first == f"$ python -m steps.{step}", f"{transcript.path(step)} starts with {first!r}"
    result = transcript.run_step(step)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert transcript.render(step, result.stdout).splitlines() == expected.splitlines()


def test_every_step_has_a_transcript() -> None:
    assert transcript.STEPS, "no steps found"
    recorded = sorted(p.stem for p in transcript.TRANSCRIPTS.glob("*.txt"))
    assert recorded == transcript.STEPS


# The line after which each step is interrupted: a moment when its
# processes run and its segments and sockets exist.
INTERRUPT_AFTER = {
    "step01_blocking_echo": "4. Client B connects",
    "step02_many_clients": "5. Client C sends",
    "step03_two_processes": "Five clients connect",
    "step04_code_queue": "Five clients connect",
    "step05_attach_or_create": "stuck after",
    "step06_classes": "sleeping on the inbound doorbell",
    "step07_recovery_modes": "[worker #1] stuck",
    "step08_heartbeat": "working on a request of 2 s",
    "step09_chat_room": "Three users join",
    "step10_many_writers": "[writer B] pushed B1",
    "step11_bus": "alice got 'hello alice'",
    "step12_keep_connections": "answered 'line 1'",
}


def test_every_step_is_interrupted() -> None:
    assert sorted(INTERRUPT_AFTER) == transcript.STEPS


def _processes_mentioning(words: list[str]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(word in cmdline for word in words):
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize("step", sorted(INTERRUPT_AFTER))
def test_step_interrupted(step: str) -> None:
    proc = subprocess.Popen(
        transcript.command(step),
        cwd=transcript.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, like a job in a terminal
    )
    try:
        seen = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            seen += line
            if INTERRUPT_AFTER[step] in line:
                break
        else:
            pytest.fail(f"{step} never printed {INTERRUPT_AFTER[step]!r}:\n{seen}")
        os.killpg(proc.pid, signal.SIGINT)
        rest, errors = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = seen + rest
    assert proc.returncode == 130, output + errors
    assert "interrupted: the demo's processes are stopped and its segments removed" in output
    assert "Traceback" not in errors, errors

    keys = {int(k, 16) for k in re.findall(r"0x([0-9a-f]{8})\b", output)}
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)}
    for key in keys:
        with pytest.raises(sysv_ipc.ExistentialError):
            sysv_ipc.SharedMemory(key, 0)
            pytest.fail(f"segment {key:#010x} was left behind:\n{output}{errors}")
        for sem_key in (key, pop_lock_key(key)):  # a shared queue's two locks
            with pytest.raises(sysv_ipc.ExistentialError):
                sysv_ipc.Semaphore(sem_key)
                pytest.fail(f"semaphore {sem_key:#010x} was left behind:\n{output}{errors}")
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            pytest.fail(f"port {port} still accepts connections:\n{output}{errors}")
    words = [f"steps.{step}"] + [f"{k:#010x}" for k in keys] + [f'"key": {k}' for k in keys]
    deadline = time.monotonic() + 10
    while (left := _processes_mentioning(words)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{left}\n{output}{errors}"
