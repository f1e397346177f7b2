"""A stepwise TCP server framework whose work survives ``kill -9``.

Layers, from the bottom up (each module's docstring is its theory of
operation):

* ``errors``    — the whole exception tree.
* ``layout``    — the segment header and placement directory (pure).
* ``ring``      — the ring of length-prefixed codes (pure).
* ``shm``       — ``SHMFactory`` (System V: INIT or RECOVER) and the
  ``SharedMemory`` allocator that places objects in order.
* ``doorbell``  — how a producer wakes a sleeping consumer.
* ``codequeue`` — ``CodeQueue``: a ring placed in a segment, with a doorbell.
* ``framing``   — length-prefixed and line framing of the TCP stream (pure).
* ``codes``     — the codes between the connect and logic processes, and
  connection ids that carry a generation (pure).
* ``journal``   — the logic process's step journal: exactly-once replies
  across crashes, and poison codes set aside (pure).
"""

__version__ = "0.1.0"
