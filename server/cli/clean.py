"""``python -m server clean``: remove a segment, and what a killed process
left of it.

A segment of another program is left alone unless ``--force``; one in use
is refused.  A shared queue's segment goes with its two semaphores and its
doorbells; with no segment, the semaphores and doorbell files that outlived
it (an ``ipcrm -m``, an opener killed halfway) are removed.
"""

from __future__ import annotations

from ..errors import CorruptSegment, SegmentError, SegmentInUse
from ..ipc.doorbell import remove_doorbells
from ..ipc.shm import SHMFactory


def clean(key: int, *, force: bool) -> None:
    if SHMFactory.exists(key):
        foreign = SHMFactory.identify(key)
        if foreign is not None and not force:
            raise SegmentError(
                f"segment 0x{key:08x} is not one of ours ({foreign}): another program's? "
                f"left alone; remove it with clean --force if you are sure",
                key=key,
            )
        if foreign is not None:
            print(f"segment 0x{key:08x} is not one of ours ({foreign}); --force: removing it")
    try:
        if _is_shared_queue(key):
            from ..ipc.sharedqueue import SharedQueue

            removed = SharedQueue.remove(key)  # its two semaphores and doorbells too
        else:
            removed = SHMFactory.remove(key)
    except SegmentInUse as err:
        attached = err.attached
        raise SegmentInUse(
            f"segment 0x{key:08x} is still attached by {attached} process(es): is the "
            f"server running? stop it first (Ctrl-C, or kill the supervisor pid that "
            f"`inspect` shows)",
            key=key,
            attached=attached,
        ) from None
    if removed:
        print(f"removed segment 0x{key:08x}")
    else:
        left = []
        if _remove_orphan_locks(key):
            left.append("the two semaphores of a shared queue")
        bells = remove_doorbells(key)  # no segment: nobody can be listening
        if bells:
            left.append(f"{bells} doorbell socket file(s) of killed processes")
        if left:
            print(f"no segment 0x{key:08x}, but removed what was left of it: {', '.join(left)}")
        else:
            print(f"no segment 0x{key:08x}: nothing to do")


def clean_bus(path: str, host: str | None, *, force: bool) -> None:
    """Every queue and relay board of the bus in ``path`` on this machine
    (of one host, or of every host): inboxes, outboxes, the relays' boards."""
    from ..core.busconfig import load_bus_config

    cfg = load_bus_config(path)
    hosts = [cfg.host(host).name] if host else sorted(cfg.hosts)
    keys = []
    for h in hosts:
        keys += [cfg.inbox_key(a) for a in cfg.endpoints_on(h)]
        keys += [cfg.outbox_key(h, peer) for peer in sorted(cfg.hosts) if peer != h]
        keys.append(cfg.relay_key(h))
    for key in keys:
        clean(key, force=force)


def _remove_orphan_locks(key: int) -> bool:
    """A shared queue's push and pop locks, left without their segment
    (an ``ipcrm -m``, or an opener killed before it made the segment).
    Both must be there: one semaphore alone by that key may be anyone's."""
    from ..ipc.semlock import lock_exists, pop_lock_key, remove_lock

    pop_key = pop_lock_key(key)
    if not (lock_exists(key) and lock_exists(pop_key)):
        return False
    return remove_lock(key) | remove_lock(pop_key)


def _is_shared_queue(key: int) -> bool:
    """Is segment ``key`` a SharedQueue's (whose semaphores go with it)?"""
    if not SHMFactory.exists(key) or SHMFactory.identify(key) is not None:
        return False
    try:
        with SHMFactory.attach(key) as shm:
            return any(p.kind == "SharedQueue" for p in shm.placements())
    except (CorruptSegment, SegmentError):
        return False
