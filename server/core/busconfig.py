"""The bus's configuration file (TOML): hosts, their relays, and a route table.

One file describes the whole bus, and every host reads the same one::

    [bus]
    key = 0x53420000        # System V keys of this bus's queues derive from it
    inbox_bytes = 1048576   # each endpoint's inbox, and each relay's outbox
    ack_every = 64          # a receiving relay acknowledges every N messages...
    ack_ms = 20             # ...or after T ms, whichever comes first

    [hosts.h1]
    listen = "127.0.0.2:7201"   # where h1's relay listens for the other relays

    [hosts.h2]
    listen = "127.0.0.3:7201"

    [endpoints]                 # the route table: which endpoint lives where
    "1.0.0.1" = "h1"
    "2.0.0.1" = "h2"
    "chat@h1" = "h1"

Everything but ``[hosts]`` and ``[endpoints]`` has a default.  Every error
names the file, the line and the value, and says what would do: a mistyped
key is an error too, not a setting silently ignored.  Parsing is pure
(``parse_bus_config(text, path)``); ``load_bus_config`` only reads the file.
TOML comes from ``tomllib`` (Python 3.11) or its backport ``tomli`` (3.10).
"""

from __future__ import annotations

import ipaddress
import re
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .sharedring import MARK_SLOTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport, same API
    import tomli as tomllib

DEFAULT_BUS_KEY = 0x53420000  # "SB"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,62}$")  # hosts and endpoint addresses
_BUS_KEYS = {"key": int, "inbox_bytes": int, "ack_every": int, "ack_ms": int}
_HOST_KEYS = {"listen"}


@dataclass(frozen=True)
class HostConfig:
    name: str
    ip: str
    port: int

    @property
    def listen(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class BusConfig:
    path: str
    hosts: dict[str, HostConfig]
    routes: dict[str, str]  # endpoint address -> host name
    key: int = DEFAULT_BUS_KEY
    inbox_bytes: int = 1 << 20
    ack_every: int = 64
    ack_ms: int = 20
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def host_of(self, address: str) -> HostConfig:
        """The host endpoint ``address`` lives on (the route table)."""
        host = self.routes.get(address)
        if host is None:
            known = ", ".join(sorted(self.routes)[:8]) or "none"
            raise ConfigError(
                f"{self.path}: no endpoint {address!r} in [endpoints] (it has: {known}); "
                f'add a line  "{address}" = "HOST"',
                option="endpoints",
                value=address,
            )
        return self.hosts[host]

    def host(self, name: str) -> HostConfig:
        if name not in self.hosts:
            raise ConfigError(
                f"{self.path}: no host {name!r} in [hosts] (it has: {', '.join(sorted(self.hosts))})",
                option="host",
                value=name,
            )
        return self.hosts[name]

    def endpoints_on(self, host: str) -> list[str]:
        return sorted(a for a, h in self.routes.items() if h == host)

    def room_peers(self, address: str) -> list[str]:
        """The other endpoints of ``address``'s room: same part before ``@``."""
        self.host_of(address)
        room = address.split("@", 1)[0]
        return sorted(a for a in self.routes if a != address and a.split("@", 1)[0] == room)

    def sender_slot(self, address: str) -> int:
        """The mark slot a server at ``address`` pushes with (into outboxes
        and local inboxes): counted down from the last, so it never meets a
        relay's (host numbers, counted up from 0)."""
        host = self.host_of(address).name
        slot = MARK_SLOTS - 1 - self.endpoints_on(host).index(address)
        if slot < len(self.hosts):
            raise ConfigError(
                f"{self.path}: host {host} has {len(self.endpoints_on(host))} endpoints and the bus "
                f"{len(self.hosts)} hosts; a server on the bus needs them to add up to at most "
                f"{MARK_SLOTS}",
                option="endpoints",
                value=address,
            )
        return slot

    def inbox_key(self, address: str) -> int:
        """The System V key of endpoint ``address``'s inbox (on its host)."""
        self.host_of(address)  # an unknown endpoint is an error
        return derive_key(self.key, "inbox", address)

    def outbox_key(self, source_host: str, target_host: str) -> int:
        """The key of the queue on ``source_host`` that its relay forwards
        to ``target_host``'s relay."""
        return derive_key(self.key, "outbox", f"{source_host}>{target_host}")

    def relay_key(self, host: str) -> int:
        """The key of the small segment where ``host``'s relay and its
        supervisor show how they and the links are doing (for ``inspect``)."""
        return derive_key(self.key, "relay", host)


def derive_key(base: int, kind: str, name: str) -> int:
    """A 32-bit key from the bus's base key and a queue's name: stable on
    every host, and never 0 (IPC_PRIVATE)."""
    mixed = zlib.crc32(f"{kind}:{name}".encode(), base & 0xFFFFFFFF) & 0xFFFFFFFF
    return mixed or 1


def load_bus_config(path: str) -> BusConfig:
    """Read and check ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(
            f"cannot read the bus configuration {path}: {err.strerror}",
            option="config",
            value=path,
        ) from None
    return parse_bus_config(text, path)


def parse_bus_config(text: str, path: str = "bus.toml") -> BusConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}", option="config", value=path) from None
    lines = _key_lines(text)
    where = _Where(path, lines)
    for name in doc:
        if name not in ("bus", "hosts", "endpoints"):
            raise where.error(
                (name,), f"unknown table [{name}] (the tables are [bus], [hosts.NAME], [endpoints])"
            )
    settings = _bus_settings(doc.get("bus", {}), where)
    hosts = _hosts(doc.get("hosts"), where)
    routes = _routes(doc.get("endpoints"), hosts, where)
    config = BusConfig(path, hosts, routes, lines=lines, **settings)
    _check_keys(config, where)
    return config


def _check_keys(config: BusConfig, where: _Where) -> None:
    """Two queues of the bus must never share a System V key."""
    names: dict[int, str] = {}
    queues = [(f"endpoint {a!r}", config.inbox_key(a), ("endpoints", a)) for a in config.routes]
    queues += [
        (f"outbox {s}>{t}", config.outbox_key(s, t), ("hosts", s))
        for s in config.hosts
        for t in config.hosts
        if s != t
    ]
    queues += [(f"host {h}'s relay board", config.relay_key(h), ("hosts", h)) for h in config.hosts]
    for what, key, at in queues:
        if key in names:
            raise where.error(
                at, f"{what} and {names[key]} would share the key 0x{key:08x}; rename one"
            )
        names[key] = what


def _bus_settings(table: Any, where: _Where) -> dict[str, int]:
    if not isinstance(table, dict):
        raise where.error(("bus",), "[bus] must be a table")
    out: dict[str, int] = {}
    limits = {
        "key": (1, 0xFFFFFFFF),
        "inbox_bytes": (4096, 1 << 30),
        "ack_every": (1, 1 << 20),
        "ack_ms": (1, 60_000),
    }
    for name, value in table.items():
        if name not in _BUS_KEYS:
            raise where.error(
                ("bus", name), f"unknown setting {name!r} in [bus] ({_choices(_BUS_KEYS)})"
            )
        low, high = limits[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise where.error(("bus", name), f"{name} = {value!r}: an integer {low}..{high}")
        out[name] = value
    return out


def _hosts(table: Any, where: _Where) -> dict[str, HostConfig]:
    if not isinstance(table, dict) or not table:
        raise where.error(
            ("hosts",), 'no hosts: add one [hosts.NAME] table with listen = "IP:PORT"'
        )
    hosts: dict[str, HostConfig] = {}
    seen: dict[str, str] = {}
    for name, host in table.items():
        if not NAME.match(name):
            raise where.error(("hosts", name), f"host name {name!r}: letters, digits, . _ @ : -")
        if not isinstance(host, dict):
            raise where.error(("hosts", name), f"hosts.{name} must be a table")
        for key in host:
            if key not in _HOST_KEYS:
                raise where.error(("hosts", name, key), f"unknown setting {key!r} (only 'listen')")
        if "listen" not in host:
            raise where.error(("hosts", name), f'[hosts.{name}] needs listen = "IP:PORT"')
        ip, port = _ip_port(host["listen"], where, ("hosts", name, "listen"))
        listen = f"{ip}:{port}"
        if listen in seen:
            raise where.error(
                ("hosts", name, "listen"), f"{listen} is also host {seen[listen]!r}'s address"
            )
        seen[listen] = name
        hosts[name] = HostConfig(name, ip, port)
    return hosts


def _ip_port(value: Any, where: _Where, at: tuple[str, ...]) -> tuple[str, int]:
    text = value if isinstance(value, str) else ""
    ip, _, port = text.rpartition(":")
    try:
        addr = ipaddress.IPv4Address(ip)
        number = int(port)
    except ValueError:
        addr, number = None, 0
    if addr is None or not 1 <= number <= 65535:
        raise where.error(
            at, f'listen = {value!r}: an IPv4 address and a port, like "127.0.0.2:7201"'
        )
    return str(addr), number


def _routes(table: Any, hosts: dict[str, HostConfig], where: _Where) -> dict[str, str]:
    if not isinstance(table, dict) or not table:
        raise where.error(
            ("endpoints",), 'no endpoints: add [endpoints] with lines "ADDRESS" = "HOST"'
        )
    routes: dict[str, str] = {}
    for address, host in table.items():
        if not NAME.match(address):
            raise where.error(
                ("endpoints", address),
                f'endpoint address {address!r}: 1-63 letters, digits, . _ @ : - (like "1.0.0.1")',
            )
        if not isinstance(host, str) or host not in hosts:
            raise where.error(
                ("endpoints", address),
                f"endpoint {address!r} lives on host {host!r}, which [hosts] does not define "
                f"(it has: {', '.join(sorted(hosts))})",
            )
        routes[address] = host
    return routes


def _choices(names: Any) -> str:
    return "the settings are " + ", ".join(sorted(names))


class _Where:
    """Errors that name the file and the line of a key."""

    def __init__(self, path: str, lines: dict[tuple[str, ...], int]) -> None:
        self.path = path
        self.lines = lines

    def error(self, at: tuple[str, ...], what: str) -> ConfigError:
        line = None
        for n in range(len(at), 0, -1):  # the key's own line, else its table's
            line = self.lines.get(at[:n])
            if line is not None:
                break
        place = f"{self.path}, line {line}" if line else self.path
        return ConfigError(f"{place}: {what}", option=".".join(at), value=at[-1] if at else None)


_TABLE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.@:-]+)\s*=')


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line numbers of tables and keys, for the errors (a light scan: the
    document has been parsed by then, so it is valid TOML)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        if m := _TABLE.match(line):
            table = tuple(_unquote(p) for p in _split_dotted(m.group(1)))
            for n in range(1, len(table) + 1):
                lines.setdefault(table[:n], number)
        elif m := _KEY.match(line):
            key = tuple(_unquote(p) for p in _split_dotted(m.group(1)))
            lines.setdefault(table + key, number)
    return lines


def _split_dotted(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "." and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _unquote(part: str) -> str:
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] == '"' else part
