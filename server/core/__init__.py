"""The pure core: rings, the segment header, codes, framing, the journal, the
client table, the supervisor's decisions.

Everything here works on bytes, ``bytearray``/``memoryview`` regions and plain
numbers (a clock is a float passed in), so it is tested without processes,
sockets or sleeps.  Nothing here imports ``os``, ``socket``, ``signal``,
``selectors``, ``subprocess`` or ``sysv_ipc``, nor another layer of the
package (``tests/test_layers.py`` checks it).
"""
