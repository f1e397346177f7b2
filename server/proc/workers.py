"""The supervisor's hands: starting, observing and killing one worker.

``Worker`` holds one worker's process and what the supervisor decided about
it (when to restart it, and why).  Everything here is an action on the
operating system; the decisions are in ``server.core.watchdog``:

* ``start`` runs ``python -m server worker ROLE`` in its own process group
  (a Ctrl-C in the terminal reaches only the supervisor, which stops the
  workers in order), handing the connect process the listening socket;
* ``seen`` reads what the watchdog needs from the status board;
* ``frozen`` asks the kernel whether the process is stopped (``T`` in
  ``/proc/PID/stat``): a stopped process cannot write its stack;
* ``stack_dump`` asks a worker for its Python stack (SIGUSR1, see
  ``server.proc.common.enable_stack_dumps``);
* ``save_copy`` writes the segment's bytes to a file (mode 0600) before a
  corrupt segment is re-initialised.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from ..core.config import ServerConfig
from ..core.status import Reason, Role, StatusBoard
from ..core.supervision import UNKNOWN_EXIT, describe_exit
from ..core.watchdog import Seen
from ..errors import ConfigError
from ..ipc.doorbell import RUN_DIR_ENV
from ..ipc.shm import SHMFactory
from .common import PARENT_ENV, STACK_SIGNAL, exit_text, process_state
from .keeper import control_pair

if TYPE_CHECKING:
    from .adoption import AdoptedProcess

log = logging.getLogger("server.supervisor")

STATE_DIR_ENV = "STCP_STATE_DIR"  # where copies of corrupt segments go (default: the temp dir)


@dataclasses.dataclass
class Worker:
    role: Role
    proc: subprocess.Popen[bytes] | AdoptedProcess | None = None
    restart_at: float | None = 0.0  # None: not to be restarted
    reason: Reason = Reason.FIRST_START
    detail: int = 0
    stop_requested: bool = False
    reload_requested: bool = False  # SIGHUP: its exit is planned, start the next one at once
    control: socket.socket | None = None  # connect: our end of its control socket
    retiring: subprocess.Popen[bytes] | None = None  # connect: the one handing over
    retiring_control: socket.socket | None = None  # and our end of its control socket
    retire_by: float = 0.0

    @property
    def name(self) -> str:
        return self.role.name.lower()

    def start(
        self,
        cfg: ServerConfig,
        listener: socket.socket,
        *,
        log_level: str = "INFO",
        run_dir: str = "",
        adopt: socket.socket | None = None,
    ) -> None:
        """Start the worker; a connect process gets the listener, a control
        socket (``server.proc.keeper``), and (``adopt``) a socket on which
        its predecessor hands its clients over (SIGHUP)."""
        cmd = [sys.executable, "-m", "server", "--log-level", log_level, "worker", self.name]
        cmd += ["--config", cfg.to_json()]
        fds: list[int] = []
        theirs = None
        if self.role is Role.CONNECT:
            self.control, theirs = control_pair()  # the caller took care of the old one
            fds = [listener.fileno(), theirs.fileno()]
            cmd += ["--listen-fd", str(fds[0]), "--control-fd", str(fds[1])]
            if adopt is not None:
                fds.append(adopt.fileno())
                cmd += ["--adopt-fd", str(adopt.fileno())]
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        if run_dir:
            env[RUN_DIR_ENV] = run_dir  # the doorbells' folder, checked by the supervisor
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=fds, stdin=subprocess.DEVNULL, process_group=0, env=env
            )
        finally:
            for sock in (theirs, adopt):
                if sock is not None:
                    sock.close()  # the child has its copy
        self.restart_at = None
        self.reload_requested = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def seen(self, status: StatusBoard, returncode: int | None, is_frozen: bool) -> Seen:
        role = self.role
        return Seen(
            returncode=returncode,
            heartbeat=status.heartbeat(role),
            requests=status.requests(role),
            busy=status.busy(role),
            progress=status.progress(role),
            frozen=is_frozen,
        )


def exit_reason(returncode: int | None) -> tuple[Reason, int, str]:
    """How a worker ended: the Reason and detail for the status board, and words for the log."""
    if returncode is None or returncode == UNKNOWN_EXIT:  # adopted: not our child
        return Reason.EXITED, UNKNOWN_EXIT, describe_exit(UNKNOWN_EXIT)
    if returncode < 0:
        return Reason.KILLED, -returncode, exit_text(returncode)
    return Reason.EXITED, returncode, exit_text(returncode)


def frozen(pid: int) -> bool:
    """Is the process stopped (SIGSTOP, a debugger)?  False if unknown."""
    return process_state(pid) in (b"T", b"t")


def stack_dump(w: Worker) -> str:
    """Ask the worker for its Python stack; says where to find it."""
    if w.proc is None or w.proc.poll() is not None:
        return "it is gone, no stack to show"
    if frozen(w.proc.pid):
        return "it is stopped (SIGSTOP?), so it cannot show its stack"
    try:
        os.kill(w.proc.pid, STACK_SIGNAL)
    except ProcessLookupError:
        return "it is gone, no stack to show"
    return "its Python stack follows in the log"


def save_copy(key: int) -> str:
    """Write the bytes of segment ``key`` to a new file (mode 0600); its path."""
    folder = os.environ.get(STATE_DIR_ENV) or tempfile.gettempdir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(folder, f"stcp-segment-0x{key:08x}-{stamp}-{os.getpid()}.bin")
    data = SHMFactory.snapshot(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def raise_fd_limit(cfg: ServerConfig) -> None:
    """The connect process needs a descriptor per client; raise the soft
    limit when the hard one allows it, otherwise say what to do."""
    needed = cfg.fds_needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    raise ConfigError(
        f"--max-conns {cfg.max_conns} needs {needed} file descriptors but this shell "
        f"allows {hard} (ulimit -n); lower --max-conns or raise the limit",
        option="--max-conns",
        value=cfg.max_conns,
    )
