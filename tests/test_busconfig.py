"""The bus's TOML configuration: what it accepts, and errors that name the
file, the line and the value."""

from __future__ import annotations

import pytest

from server.core.busconfig import DEFAULT_BUS_KEY, load_bus_config, parse_bus_config
from server.errors import ConfigError

GOOD = """\
[bus]
key = 0x53420001
ack_every = 32

[hosts.h1]
listen = "127.0.0.2:7201"

[hosts.h2]
listen = "127.0.0.3:7201"

[endpoints]
"1.0.0.1" = "h1"
"2.0.0.1" = "h2"
"chat@h1" = "h1"
"""


def test_a_good_file() -> None:
    config = parse_bus_config(GOOD, "bus.toml")
    assert config.key == 0x53420001 and config.ack_every == 32 and config.ack_ms == 20
    assert config.host("h2").listen == "127.0.0.3:7201"
    assert config.host_of("chat@h1").name == "h1"
    assert config.endpoints_on("h1") == ["1.0.0.1", "chat@h1"]


def test_defaults() -> None:
    config = parse_bus_config(GOOD.replace("key = 0x53420001\nack_every = 32\n", ""))
    assert config.key == DEFAULT_BUS_KEY and config.ack_every == 64


@pytest.mark.parametrize(
    ("change", "line", "words"),
    [
        (("ack_every = 32", "ack_evry = 32"), 3, "unknown setting 'ack_evry'"),
        (("ack_every = 32", "ack_every = 0"), 3, "ack_every = 0: an integer 1.."),
        (('listen = "127.0.0.3:7201"', 'listen = "127.0.0.3"'), 9, "'127.0.0.3': an IPv4"),
        (('listen = "127.0.0.3:7201"', 'listen = "localhost:7201"'), 9, "an IPv4 address"),
        (('listen = "127.0.0.3:7201"', 'listen = "127.0.0.2:7201"'), 9, "also host 'h1'"),
        (('"2.0.0.1" = "h2"', '"2.0.0.1" = "h3"'), 13, "host 'h3', which [hosts] does not"),
        (('"chat@h1" = "h1"', '"chat room" = "h1"'), 14, "address 'chat room'"),
        (("[endpoints]", "[endpoint]"), 11, "unknown table [endpoint]"),
        (('listen = "127.0.0.3:7201"', 'lisen = "127.0.0.3:7201"'), 9, "unknown setting 'lisen'"),
    ],
)
def test_errors_name_the_file_line_and_value(
    change: tuple[str, str], line: int, words: str
) -> None:
    text = GOOD.replace(*change)
    with pytest.raises(ConfigError) as err:
        parse_bus_config(text, "conf/bus.toml")
    assert str(err.value).startswith(f"conf/bus.toml, line {line}: "), str(err.value)
    assert words in str(err.value)


def test_broken_toml_and_missing_parts() -> None:
    with pytest.raises(ConfigError, match=r"bus.toml: not valid TOML: .*line 1"):
        parse_bus_config("[bus\n", "bus.toml")
    with pytest.raises(ConfigError, match="no hosts"):
        parse_bus_config('[endpoints]\n"a" = "h1"\n')
    with pytest.raises(ConfigError, match="no endpoints"):
        parse_bus_config('[hosts.h1]\nlisten = "127.0.0.2:1"\n')


def test_an_unknown_endpoint_or_host_says_what_there_is() -> None:
    config = parse_bus_config(GOOD, "bus.toml")
    with pytest.raises(ConfigError, match=r"no endpoint '3.0.0.1' in \[endpoints\].*1.0.0.1"):
        config.host_of("3.0.0.1")
    with pytest.raises(ConfigError, match="no host 'h9'.*h1, h2"):
        config.host("h9")


def test_a_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read the bus configuration .*nothere.toml"):
        load_bus_config(str(tmp_path / "nothere.toml"))
    (tmp_path / "bus.toml").write_text(GOOD)
    assert load_bus_config(str(tmp_path / "bus.toml")).routes["2.0.0.1"] == "h2"
