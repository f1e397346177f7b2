"""Step 11: a bus between hosts; a relay killed mid-stream and nothing lost.

**What it adds.**  Step 10's queue lets unrelated processes on one host
talk.  A *bus* names them: an endpoint has an address (``alice@h1``) and
one ``SharedQueue`` inbox on its host, and a file, ``bus.toml``, says which
host each endpoint lives on and where each host's *relay* listens.  A send
to an endpoint on the same host goes straight into its inbox; a send to
another host goes into this host's *outbox* for that host, and the relay
forwards it over TCP to the other host's relay, which pushes it into the
target's inbox.  Either way ``send`` returns once the message is in shared
memory, where a crash cannot lose it.

Exactly once, in order, across a ``kill -9`` of either relay or a dropped
link, takes three rules (TBus's, in our words):

* each direction of a link numbers its messages 1, 2, 3, ...: the count of
  the sending host's outbox, which survives any restart;
* a message leaves the sender's outbox only when the receiving relay says
  it applied it (an ACK): a relay that died resends from where the other
  side really is, learnt from a HELLO on every reconnect;
* the receiver records "applied up to N" *in the same step* as the push
  into the target's inbox (a *mark*, written under the inbox's lock), so a
  message sent twice is applied once.

**Run it.**  ``python -m steps.step11_bus``.  The two hosts are the
loopback addresses 127.0.0.2 and 127.0.0.3 of this machine;
``python -m tools.chaos_bus`` runs the same across network namespaces, with
links taken down too.

**What to watch.**  Both relays start; alice (on h1) and bob (on h2) say
hello both ways.  Then bob's relay is killed with ``SIGKILL``, and alice
sends five messages: they wait in h1's outbox.  A new relay starts on h2;
the two relays exchange HELLOs, h1 learns what h2 applied, sends the rest,
and bob gets all five, once each, in order; h1's outbox is empty again.

The relay program is a supervisor that runs the relay as a process of its
own and restarts it when it dies or hangs (``server/proc/relaysup.py``);
here the whole program is killed, supervisor and all, so that the messages
have time to wait, and the step starts it again.

**Read next.**  ``server/core/buslink.py`` (the protocol), ``server/proc/relay.py``
and ``relaylinks.py`` (the relay), ``server/ipc/sqpeek.py`` and the marks
of ``server/core/sharedring.py`` (what makes it exactly once).
"""

from __future__ import annotations

import random
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

from server import SharedQueue
from server.bus import Bus, load_bus_config
from server.ipc.shm import SHMFactory
from steps._kit import Child, DemoError, Stage, run, say

ALICE, BOB = "alice@h1", "bob@h2"


def log_message(line: str) -> str:
    """``2026-01-01 12:00:00,000 relay[42] INFO text`` -> ``text``."""
    return re.sub(r"^\S+ \S+ \w+\[\d+\] \w+ ", "", line)


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, key: int) -> str:
    path = folder / "bus.toml"
    path.write_text(
        f"[bus]\nkey = 0x{key:08x}\n\n"
        f'[hosts.h1]\nlisten = "127.0.0.2:{free_port("127.0.0.2")}"\n\n'
        f'[hosts.h2]\nlisten = "127.0.0.3:{free_port("127.0.0.3")}"\n\n'
        f'[endpoints]\n"{ALICE}" = "h1"\n"{BOB}" = "h2"\n'
    )
    return str(path)


def remove_queues(config: str) -> None:
    cfg = load_bus_config(config)
    for address in cfg.routes:
        SharedQueue.remove(cfg.inbox_key(address))
    for source, target in (("h1", "h2"), ("h2", "h1")):
        SharedQueue.remove(cfg.outbox_key(source, target))
        SHMFactory.remove(cfg.relay_key(source))  # the relay's board (its processes, its links)


def _wait_until_empty(outbox: SharedQueue) -> None:
    """An outbox empties when the other relay's ACK comes (in ack_ms, 20 ms)."""
    deadline = time.monotonic() + 10
    while len(outbox) and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m steps.step11_bus", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="stcp-step11-") as folder:
        config = write_config(Path(folder), random.randint(0x1000_0000, 0x7FFF_FFFF))
        try:
            with Stage() as stage:  # its exit stops the relays...
                return _demo(stage, config)
        finally:
            remove_queues(config)  # ...so that their queues can go


def _demo(stage: Stage, config: str) -> int:
    def relay(host: str) -> Child:
        child = stage.start(
            f"relay {host}",
            "server",
            "relay",
            "--config",
            config,
            "--host",
            host,
            relay=False,
            tidy=log_message,
        )
        child.expect(r"listening on")
        return child

    say("1. bus.toml: host h1 on 127.0.0.2, host h2 on 127.0.0.3; alice lives on h1, bob on h2.")
    say("   Start one relay per host (python -m server relay --config bus.toml --host h1).")
    relays = {"h1": relay("h1"), "h2": relay("h2")}
    cfg = load_bus_config(config)
    with Bus.open(ALICE, config=config) as alice, Bus.open(BOB, config=config) as bob:
        say("2. alice and bob say hello, each to the other's host.")
        alice.send(BOB, b"hello bob")
        bob.send(ALICE, b"hello alice")
        for who, bus in (("bob", bob), ("alice", alice)):
            got = bus.recv(timeout=10)
            if got is None:
                raise DemoError(f"{who} got nothing")
            say(f"   {who} got {got[1].decode()!r} from {got[0]}")

        with SharedQueue.open(cfg.outbox_key("h1", "h2"), cfg.inbox_bytes) as outbox:
            _wait_until_empty(outbox)
            say(f"   {len(outbox)} waiting in h1's outbox for h2: h2 acknowledged 'hello bob'.")

        victim = relays["h2"]
        say("3. kill -9 the relay of h2 (bob's host).")
        victim.kill()
        say("   alice sends five messages; they wait in h1's outbox for h2:")
        for i in range(1, 6):
            alice.send(BOB, b"message %d" % i)
        with SharedQueue.open(cfg.outbox_key("h1", "h2"), cfg.inbox_bytes) as outbox:
            say(f"   {len(outbox)} waiting in the outbox; bob has {len(bob.inbox)} in his inbox.")
            say("4. A new relay starts on h2: HELLOs, then the rest is sent and applied.")
            relays["h2"] = relay("h2")
            received = [bob.recv(timeout=10) for _ in range(5)]
            if received != [(ALICE, b"message %d" % i) for i in range(1, 6)]:
                raise DemoError(f"bob got {received}")
            say("   bob got " + ", ".join(repr(m[1].decode()) for m in received if m) + ".")
            _wait_until_empty(outbox)
            say(
                f"   Once each, in order; {len(outbox)} left in h1's outbox "
                f"(the ACK took them); {len(bob.inbox)} left in bob's inbox."
            )
        if bob.recv(timeout=0.5) is not None:
            raise DemoError("bob got a message twice")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
