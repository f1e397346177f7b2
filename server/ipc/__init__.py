"""What touches System V and file descriptors: the segment and its allocator
(``shm``), the server's segment (``segment``), doorbells and the CodeQueue.

Imports only ``server.core`` and ``server.errors``.
"""
