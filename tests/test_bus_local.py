"""Bus endpoints on one host: inboxes in shared memory, sends between
programs, and sends for another host waiting in its outbox."""

from __future__ import annotations

import random
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import SharedQueue
from server.bus import Bus, load_bus_config
from server.core.buslink import envelope, open_envelope
from server.errors import BadCode, ConfigError
from tools.busrig import remove_queues

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path) -> Iterator[str]:
    """A bus.toml with a random base key; every queue it names is removed after."""
    path = tmp_path / "bus.toml"
    path.write_text(
        f"""
[bus]
key = {random.randint(0x1000_0000, 0x7FFF_FFFF)}
inbox_bytes = 65536

[hosts.h1]
listen = "127.0.0.2:7201"

[hosts.h2]
listen = "127.0.0.3:7201"

[endpoints]
"1.0.0.1" = "h1"
"1.0.0.2" = "h1"
"2.0.0.1" = "h2"
"""
    )
    yield str(path)
    remove_queues(str(path))


SENDER = """
import sys
from server.bus import Bus
with Bus.open("1.0.0.1", config=sys.argv[1]) as bus:
    for i in range(200):
        assert bus.send("1.0.0.2", b"message %d" % i, timeout=5)
"""


def test_a_program_sends_to_another_endpoint_on_this_host(config: str) -> None:
    with Bus.open("1.0.0.2", config=config) as b:
        done = subprocess.run(
            [sys.executable, "-c", SENDER, config], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        got = [b.recv(timeout=5) for _ in range(200)]
        assert got == [("1.0.0.1", b"message %d" % i) for i in range(200)]
        assert b.recv(timeout=0) is None


def test_a_message_sent_before_its_reader_started_waits_for_it(config: str) -> None:
    with Bus.open("1.0.0.1", config=config) as a:
        assert a.send("1.0.0.2", b"early", timeout=0)
    with Bus.open("1.0.0.2", config=config) as b:
        assert b.recv(timeout=1) == ("1.0.0.1", b"early")


def test_a_send_to_another_host_waits_in_the_outbox_for_its_relay(config: str) -> None:
    cfg = load_bus_config(config)
    with Bus.open("1.0.0.1", config=config) as a:
        assert a.send("2.0.0.1", b"far away", timeout=0)
        with SharedQueue.open(cfg.outbox_key("h1", "h2"), cfg.inbox_bytes) as outbox:
            assert len(outbox) == 1
            code = outbox.pop(timeout=0)
            assert code is not None
            assert open_envelope(code) == ("1.0.0.1", "2.0.0.1", b"far away")


def test_an_unknown_endpoint_is_named(config: str) -> None:
    with (
        Bus.open("1.0.0.1", config=config) as a,
        pytest.raises(ConfigError, match=r"no endpoint '9.9.9.9' in \[endpoints\]"),
    ):
        a.send("9.9.9.9", b"?")
    with pytest.raises(ConfigError, match="no endpoint 'nobody'"):
        Bus.open("nobody", config=config)


def test_a_selectors_loop_wakes_for_a_message(config: str) -> None:
    with Bus.open("1.0.0.2", config=config) as b, Bus.open("1.0.0.1", config=config) as a:
        sel = selectors.DefaultSelector()
        sel.register(b.fileno(), selectors.EVENT_READ)
        assert b.prepare_wait()  # nothing there: select
        start = time.monotonic()
        a.send("1.0.0.2", b"ding")
        assert sel.select(timeout=2)
        b.finish_wait()
        assert time.monotonic() - start < 0.5
        assert b.recv(timeout=0) == ("1.0.0.1", b"ding")
        sel.close()


def test_envelopes_from_shared_memory_are_checked() -> None:
    code = envelope("1.0.0.1", "2.0.0.1", b"x")
    assert open_envelope(code) == ("1.0.0.1", "2.0.0.1", b"x")
    for bad in (b"", b"\x05ab", b"\x01a\x09b", b"\x00\x01a", b"\x01\xff\x01a"):
        with pytest.raises(BadCode):
            open_envelope(bad)
    with pytest.raises(ValueError, match="1..255 bytes"):
        envelope("", "b", b"")


def test_the_bus_from_a_shell(config: str) -> None:
    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server", "bus", *args, "--config", config],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    words = cli("send", "--from", "1.0.0.1", "--to", "1.0.0.2", "hello", "there")
    assert words.returncode == 0, words.stderr
    lines = cli("send", "--from", "1.0.0.1", "--to", "1.0.0.2", stdin="one\ntwo\n")
    assert lines.returncode == 0, lines.stderr
    assert cli("send", "--from", "1.0.0.1", "--to", "2.0.0.1", "far").returncode == 0
    stat = cli("stat", "--host", "h1")
    assert re.search(r"inbox 1\.0\.0\.2 .* 3 waiting", stat.stdout), stat.stdout
    assert re.search(r"outbox -> h2 .* 1 waiting, ", stat.stdout), stat.stdout
    assert "relay: never started" in stat.stdout, stat.stdout
    got = cli("recv", "--as", "1.0.0.2", "--count", "3", "--timeout", "2")
    assert got.stdout.splitlines() == ["1.0.0.1: hello there", "1.0.0.1: one", "1.0.0.1: two"]
    unknown = cli("send", "--from", "1.0.0.1", "--to", "9.9.9.9", "x")
    assert unknown.returncode == 2 and "no endpoint '9.9.9.9'" in unknown.stderr
