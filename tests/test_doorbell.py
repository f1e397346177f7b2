"""Doorbells no other user can take or ring: a folder that is ours, 0700.

The squatter is a real process running as another uid (the tests run as
root, which may become any uid); skipped where that is not possible.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from helpers.server import EchoClient

from server import DoorbellInUse, DoorbellPermissionError
from server.ipc.doorbell import Doorbell, check_private

OTHER_UID = 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_other_user(action) -> int:  # type: ignore[no-untyped-def]
    """Run ``action()`` in a child process with another uid; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            action()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_folder_open_to_others_or_a_link_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(DoorbellPermissionError, match="mode 0755"):
        check_private(str(open_dir))
    link = tmp_path / "link"
    link.symlink_to(open_dir)
    with pytest.raises(DoorbellPermissionError, match="not a folder"):
        check_private(str(link))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert check_private(str(private)) == str(private)


@as_root
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(DoorbellPermissionError, match=f"belongs to uid {OTHER_UID}"):
        check_private(str(theirs))


def test_a_live_consumer_keeps_its_doorbell_and_a_dead_one_leaves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("STCP_RUN_DIR", str(folder))
    first = Doorbell("stcp-test.sock")
    first.listen()
    with pytest.raises(DoorbellInUse):
        Doorbell("stcp-test.sock").listen()
    assert Doorbell("stcp-test.sock").ring() and first.drain() == 1
    first._listener.close()  # type: ignore[union-attr]  # as a SIGKILL would: the file stays
    first._listener = None
    assert (folder / "stcp-test.sock").exists()
    second = Doorbell("stcp-test.sock")
    second.listen()  # nobody answered there: taken over
    assert Doorbell("stcp-test.sock").ring() and second.drain() == 1
    second.close()
    assert not (folder / "stcp-test.sock").exists()


@as_root
def test_a_squatter_from_another_user_cannot_stop_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    runtime = Path(tempfile.mkdtemp(prefix="stcp-test-runtime-", dir="/tmp"))
    try:
        _squatted(start_server, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _squatted(start_server, runtime: Path) -> None:  # type: ignore[no-untyped-def]
    runtime.chmod(0o777)  # like /tmp: anyone may create things here
    squatted = runtime / "stcp"
    assert as_other_user(lambda: os.mkdir(squatted, 0o777)) == 0  # it got there first
    server = start_server(env={"XDG_RUNTIME_DIR": str(runtime)})
    c = EchoClient(server.port)
    assert c.request(b"served anyway") == b"served anyway"
    log = server.log()
    assert f"belongs to uid {OTHER_UID}" in log and "using a private folder" in log
    private = log.split("using a private folder for the doorbells instead: ")[1].split()[0]
    # the squatter can neither enter the private folder nor ring its doorbells
    bell = os.path.join(private, os.listdir(private)[0])

    def ring() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"!", bell)

    assert as_other_user(ring) == 1
    assert c.request(b"still served") == b"still served"
    assert server.stop() == 0
    assert not os.path.exists(private)  # its own folder is removed at the end
