"""The command line, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sysv_ipc

from server import CodeQueue, SHMFactory


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=60
    )


def test_demo_shows_codes_surviving_kill_9(key: int) -> None:
    result = run("demo", "--key", hex(key), "--codes", "500")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "start mode INIT" in out
    assert "kill -9" in out and "exit -9" in out
    assert "start mode RECOVER" in out
    assert "found 500 pending codes" in out and "all there, in order" in out
    assert not SHMFactory.exists(key)


def test_inspect_and_clean(key: int) -> None:
    with SHMFactory.create_product(key, 1 << 16) as shm:
        q = CodeQueue(shm, 3333, "inbound")
        q.push_many([b"a", b"bb", b"ccc"])
        q.pop()
        busy = run("clean", "--key", hex(key))
        assert busy.returncode == 1 and busy.stderr.startswith("Error: ")
        assert "still attached by 1 process" in busy.stderr
    result = run("inspect", "--key", hex(key), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["start_mode"] == "init" and info["generation"] == 1
    assert info["segment"]["mode"] == "0600"
    assert info["queues"]["inbound"]["pending"] == 2
    assert info["queues"]["inbound"]["pushed"] == 3
    table = run("inspect", "--key", hex(key))
    assert "inbound" in table.stdout and "pending" in table.stdout
    assert run("clean", "--key", hex(key)).returncode == 0
    assert not SHMFactory.exists(key)
    missing = run("inspect", "--key", hex(key))
    assert missing.returncode == 1 and "is the server running?" in missing.stderr


def test_bad_key_is_a_usage_error() -> None:
    result = run("inspect", "--key", "banana")
    assert result.returncode == 2 and "0x53544350" in result.stderr


def test_inspect_into_a_closed_pipe_is_quiet(key: int) -> None:
    """``inspect | head -1``: the reader leaves before the table is written."""
    with SHMFactory.create_product(key, 1 << 16) as shm:
        CodeQueue(shm, 3333, "inbound")
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "inspect", "--key", hex(key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.close()  # long before the interpreter has started
        _, errors = proc.communicate(timeout=60)
    assert "Traceback" not in errors, errors
    assert proc.returncode == 1


def test_clean_leaves_other_programs_segments_alone(key: int) -> None:
    seg = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=8192)
    seg.write(b"NOTOURS!")
    seg.detach()
    refused = run("clean", "--key", hex(key))
    assert refused.returncode == 1
    assert "is not one of ours" in refused.stderr and "NOTOURS!" in refused.stderr
    assert "--force" in refused.stderr
    assert SHMFactory.exists(key)
    forced = run("clean", "--key", hex(key), "--force")
    assert forced.returncode == 0 and "removed segment" in forced.stdout
    assert not SHMFactory.exists(key)


def test_clean_removes_a_shared_queues_locks_left_without_their_segment(key: int) -> None:
    from server import SharedQueue
    from server.ipc.semlock import lock_exists, pop_lock_key

    SharedQueue.open(key, 4096).close()
    sysv_ipc.SharedMemory(key, 0).remove()  # an ipcrm -m: the semaphores stay
    from server.ipc.doorbell import doorbell_name, run_dir

    bell = os.path.join(run_dir(), doorbell_name(key, "sq0"))
    open(bell, "w").close()  # as a reader killed asleep leaves it
    assert lock_exists(key) and lock_exists(pop_lock_key(key))
    result = run("clean", "--key", hex(key))
    assert result.returncode == 0, result.stderr
    assert "the two semaphores of a shared queue" in result.stdout
    assert not lock_exists(key) and not lock_exists(pop_lock_key(key))
    assert "1 doorbell socket file(s)" in result.stdout and not os.path.exists(bell)
    assert "nothing to do" in run("clean", "--key", hex(key)).stdout


def test_the_first_things_a_newcomer_types() -> None:
    bare = run()
    assert bare.returncode == 2 and "Examples:" in bare.stdout and "worker" not in bare.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("python -m server 0.")
    assert "worker" not in run("--help").stdout  # started by run, not by people
    late = run("inspect", "-v", "--key", "0x1234")  # -v after the command is fine
    assert late.returncode == 1 and "no segment with key 0x00001234" in late.stderr
    assert run("inspect", "--key", "0xffffffff").returncode == 1  # a valid key, as ipcs shows it
    assert run("inspect", "--key", "0x100000000").returncode == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-frame", "0"], "--max-frame 0"),
        (["--host", "999.1.1.1"], "--host '999.1.1.1': not a valid address or host name"),
        (["--port", "70000"], "--port 70000"),
    ],
)
def test_bad_values_are_bad_usage_and_say_why(args: list[str], says: str, key: int) -> None:
    result = run("run", "--port", "0", "--key", hex(key), *args)
    assert result.returncode == 2
    assert says in result.stderr and not SHMFactory.exists(key)


def test_a_large_frame_limit_needs_no_other_option(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--max-frame", "1048576")
    big = b"x" * 1048576
    from helpers.server import EchoClient

    assert EchoClient(server.port, timeout=30).request(big) == big


def test_the_line_client_reads_a_file(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--app", "chat")
    listener = __import__("helpers.server", fromlist=["LineClient"]).LineClient(server.port)
    assert listener.line().startswith("* welcome")
    lines = tmp_path / "lines.txt"
    lines.write_text("hello from a file\nsecond line\n")
    with lines.open() as stdin:
        out = subprocess.run(
            [sys.executable, "-m", "server", "client", "--port", str(server.port)],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 0, out.stderr
    assert "the server closed the connection" in out.stdout
    got = [listener.line() for _ in range(4)]
    assert "hello from a file" in got[1] and "second line" in got[2] and "left" in got[3]


def test_inspect_watch_refreshes_until_ctrl_c(key: int) -> None:
    import signal
    import time

    with SHMFactory.create_product(key, 1 << 16) as shm:
        CodeQueue(shm, 3333, "inbound")
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "inspect", "--key", hex(key), "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert out.count("Ctrl-C to stop") >= 2 and "inbound" in out and "Traceback" not in err
