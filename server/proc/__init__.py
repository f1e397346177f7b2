"""The processes: supervisor, connect and logic.  Thin loops that observe,
ask ``server.core`` what to do, and do it with ``server.ipc``, sockets and
signals.

Imports ``server.ipc``, ``server.core`` and ``server.errors``.
"""
