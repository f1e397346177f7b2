"""The server's configuration: defaults, validation, and how it travels.

The supervisor validates one ``ServerConfig`` and hands it, as JSON on the
command line, to the connect and logic processes it starts, so all three
agree on the segment layout.  Every error names the option, the value and
what would be accepted.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..errors import ConfigError
from .codes import HEADER_SIZE as CODE_HEADER
from .framing import DEFAULT_MAX_FRAME, FRAMINGS
from .ring import RECORD_HEADER

DEFAULT_KEY = 0x53544350  # "STCP"
DEFAULT_PORT = 7000
DEFAULT_OUT_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    app: str = "echo"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    key: int = DEFAULT_KEY
    framing: str = "length"
    max_frame: int = DEFAULT_MAX_FRAME
    max_conns: int = 1000
    queue_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0  # seconds without input before a client is closed; 0: never
    out_buffer: int = 0  # unread reply bytes before reading from a client pauses; 0: derived
    send_timeout: float = 30.0  # seconds a client may leave replies unread before it is closed
    frame_timeout: float = 30.0  # seconds a client may take to finish a frame it began
    hang_timeout: float = 5.0  # seconds without a heartbeat before a worker is killed (frozen)
    stop_timeout: float = 30.0  # a graceful stop gives up when nothing moved this long
    request_timeout: float = 30.0  # seconds one request may run before the logic process is killed
    full_message: str = "server full: too many connections"
    bus: str = ""  # a bus.toml: the logic process is endpoint ``endpoint`` of that bus
    endpoint: str = ""

    def validate(self) -> ServerConfig:
        def bad(option: str, value: object, wanted: str) -> ConfigError:
            return ConfigError(f"{option} {value!r}: {wanted}", option=option, value=value)

        if self.framing not in FRAMINGS:
            raise bad("--framing", self.framing, f"choose one of {', '.join(FRAMINGS)}")
        if not 0 <= self.port < 65536:
            raise bad("--port", self.port, "a port is 0..65535 (0: pick a free one)")
        if not 0 < self.key <= 0xFFFF_FFFF:
            raise bad("--key", self.key, "a key is 1..0xffffffff (as ipcs shows it)")
        if not 1 <= self.max_frame < 1 << 31:
            raise bad("--max-frame", self.max_frame, "bytes, 1..2**31-1")
        if self.out_buffer == 0:  # enough for 1 MiB, and for two of the largest frames
            derived = max(DEFAULT_OUT_BUFFER, 2 * (self.max_frame + 4))
            return dataclasses.replace(self, out_buffer=derived).validate()
        if not 1 <= self.max_conns <= 100_000:
            raise bad("--max-conns", self.max_conns, "1..100000")
        smallest = 2 * (self.max_frame + CODE_HEADER + RECORD_HEADER)
        if self.queue_bytes < smallest:
            raise bad(
                "--queue-bytes",
                self.queue_bytes,
                f"each queue must hold two of the largest codes; with --max-frame "
                f"{self.max_frame} it needs at least {smallest}",
            )
        if self.queue_bytes > 1 << 30:
            raise bad("--queue-bytes", self.queue_bytes, "at most 1 GiB per queue")
        if self.idle_timeout < 0:
            raise bad("--idle-timeout", self.idle_timeout, "seconds >= 0 (0: never)")
        if self.out_buffer < self.max_frame + 4:
            raise bad("--out-buffer", self.out_buffer, "must hold at least one largest frame")
        if self.send_timeout <= 0:
            raise bad("--send-timeout", self.send_timeout, "seconds > 0")
        if self.frame_timeout <= 0:
            raise bad("--frame-timeout", self.frame_timeout, "seconds > 0")
        if self.hang_timeout <= 0:
            raise bad("--hang-timeout", self.hang_timeout, "seconds > 0")
        if self.stop_timeout <= 0:
            raise bad("--stop-timeout", self.stop_timeout, "seconds > 0")
        if self.request_timeout <= 0:
            raise bad("--request-timeout", self.request_timeout, "seconds > 0")
        if bool(self.bus) != bool(self.endpoint):
            given, other = ("--bus", "--endpoint") if self.bus else ("--endpoint", "--bus")
            value = self.bus or self.endpoint
            raise bad(given, value, f"give {other} too (a server on a bus is one of its endpoints)")
        return self

    @property
    def fds_needed(self) -> int:
        """File descriptors the connect process needs: one per client, and
        some for the listener, the doorbells and the log."""
        return self.max_conns + 64

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls(**json.loads(text)).validate()
