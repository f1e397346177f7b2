"""The bus: named endpoints on each host, a relay per host.

::

    from server.bus import Bus
    bus = Bus.open("1.0.0.1", config="bus.toml")
    bus.send("2.0.0.1", b"payload")       # True once it is in shared memory on this host
    bus.recv()                            # (source address, payload)

The endpoint is ``server.ipc.bus``; the configuration file is
``server.core.busconfig``; the protocol between relays is
``server.core.buslink``.
"""

from .core.busconfig import BusConfig, load_bus_config, parse_bus_config
from .ipc.bus import Bus

__all__ = ["Bus", "BusConfig", "load_bus_config", "parse_bus_config"]
