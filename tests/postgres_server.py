"""A throwaway PostgreSQL cluster for the tests: a temporary directory, 127.0.0.1 on a free port.

PostgreSQL refuses to run as root, so when the tests run as root the cluster's directory belongs
to the ``postgres`` user and ``initdb`` / ``pg_ctl`` run through ``runuser -u postgres --``.
Debian installs the binaries under ``/usr/lib/postgresql/<version>/bin`` (not on PATH); the newest
found there, or ``initdb`` on PATH, is used.

``start()`` returns a running :class:`PostgresServer` (``.dsn``, ``.port``, ``.stop()``,
``.start()``, ``.destroy()``) or raises ``PostgresUnavailable`` saying why. Host authentication
uses scram-sha-256 with :data:`PASSWORD` for the ``postgres`` user, so DSNs carry a password that
the redaction tests look for. Every wait is bounded (``pg_ctl -w -t``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "Pg-Sup3r-s3cret-9f2a"
USER = "postgres"
STARTUP_SECONDS = 30


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL cluster could be started for the tests."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent  # a symlink on PATH points at the real bin dir
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.password = PASSWORD
        self.user = USER
        self.root = Path(tempfile.mkdtemp(prefix="buttress-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root needs runuser to start PostgreSQL")
            try:
                import pwd

                owner = pwd.getpwnam(USER)
            except KeyError:
                raise PostgresUnavailable("running as root needs a 'postgres' user") from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.sockets.mkdir()
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_postgres:
            for path in (self.sockets, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
                "--no-instructions",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        password_file.unlink()

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@{self.host}:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed with {result.returncode}: {(result.stderr or result.stdout)[-600:]}"
                f"{self._tail()}"
            )

    def _tail(self) -> str:
        try:
            return "\n" + self.log.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses={self.host} -k {self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(STARTUP_SECONDS), "start",
            timeout=STARTUP_SECONDS + 10,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(STARTUP_SECONDS), "stop",
            timeout=STARTUP_SECONDS + 10,
        )  # fmt: skip

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb on PATH or /usr/lib/postgresql/*/bin)"
        )
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


class ReplicaServer(PostgresServer):
    """A streaming replica of ``primary``: ``pg_basebackup -R`` of its data, read-only, on a port
    of its own. It follows the primary while both run; it is never promoted."""

    def __init__(self, primary: PostgresServer) -> None:  # no initdb: the data is a base backup
        self.bin_dir = primary.bin_dir
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.password = PASSWORD
        self.user = USER
        self.root = Path(tempfile.mkdtemp(prefix="buttress-pg-replica-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self._as_postgres = primary._as_postgres
        self.sockets.mkdir()
        if self._as_postgres:
            import pwd

            owner = pwd.getpwnam(USER)
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        command = [
            str(self.bin_dir / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream",
            "-h", primary.host, "-p", str(primary.port), "-U", USER, "--no-sync",
        ]  # fmt: skip
        if self._as_postgres:
            command = ["runuser", "-u", USER, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )
        if result.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise PostgresUnavailable(f"pg_basebackup failed: {result.stderr[-600:]}")


def start_replica(primary: PostgresServer) -> ReplicaServer:
    replica = ReplicaServer(primary)
    try:
        replica.start()
    except BaseException:
        replica.destroy()
        raise
    return replica
