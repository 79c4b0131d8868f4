"""A throwaway PostgreSQL server for tests and benchmarks: a temporary directory,
a Unix socket only (no TCP port), trust authentication, stopped and deleted at the end.

Where the server binaries come from, first hit wins (:func:`find_bindir`):
``$WA_PG_BINDIR``; ``initdb``/``pg_ctl`` on ``PATH``; the distribution's
``/usr/lib/postgresql/<version>/bin`` (newest first); the ``pgserver`` wheel's
bundled binaries, if that package is installed. :func:`install_postgres` adds one
when allowed: ``apt-get install -y postgresql`` as root, else ``pip install pgserver``.

PostgreSQL refuses to run as root: as root, the server runs as an unprivileged
user (``postgres`` if the system has it, else ``wa_pg``, created with ``useradd``),
through ``runuser -u USER --`` (or ``su``), and the directory is given to it.

``fsync=False`` (the default here) makes the server skip disk flushes: it still
survives a kill of any of its processes (the data is in the OS page cache), not a
power loss. Benchmarks pass ``fsync=True`` to measure durable settings.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROLE = "wa"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries were found (or could be installed)."""


class PostgresStartFailed(RuntimeError):
    """initdb or pg_ctl failed; the message carries their output and the server log."""


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    def ok(d: Path) -> bool:
        return all((d / exe).exists() for exe in ("initdb", "pg_ctl", "postgres"))

    env = os.environ.get("WA_PG_BINDIR")
    if env and ok(Path(env)):
        return Path(env)
    on_path = shutil.which("pg_ctl")
    if on_path and ok(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if ok(Path(bindir)):
            return Path(bindir)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if ok(Path(loc) / "pginstall" / "bin"):
                return Path(loc) / "pginstall" / "bin"
    return None


def install_postgres() -> Path | None:
    """Try to install a server: the distribution package as root (``apt-get``),
    else the ``pgserver`` wheel into this interpreter. Returns :func:`find_bindir`."""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "postgresql"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
        found = find_bindir()
        if found is not None:
            return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pgserver"], capture_output=True)
    importlib.invalidate_caches()
    return find_bindir()


def _server_user() -> str | None:
    """The unprivileged user to run the server as (None: ourselves, not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "wa_pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "wa_pg"], check=True, capture_output=True)
    return "wa_pg"


class LocalPostgres:
    """A running throwaway server. Use :meth:`start`; :meth:`stop` deletes it all.

    Attributes:
        root: its directory (data in ``root/data``, socket and log in ``root``).
        bindir: where its binaries are.
    """

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.user = user
        self._dbs = 0

    @classmethod
    def start(cls, *, bindir: Path | None = None, fsync: bool = False,
              settings: dict[str, str] | None = None) -> LocalPostgres:
        """initdb and start a server; return it running.

        Raises:
            PostgresMissing: no binaries (see :func:`find_bindir`).
            PostgresStartFailed: initdb or pg_ctl failed (their output in the message).
        """
        bindir = bindir or find_bindir()
        if bindir is None:
            raise PostgresMissing("no PostgreSQL server binaries (initdb, pg_ctl) found")
        user = _server_user()
        # /tmp: short enough for a Unix socket path, and reachable by the server's
        # user when we are root (TMPDIR may point into root's home).
        root = Path(tempfile.mkdtemp(prefix="wa-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        if user is not None:
            shutil.chown(root, user)
        server = cls(bindir, root, user)
        try:
            server._run("initdb", "-D", str(root / "data"), "-U", ROLE, "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C")
            opts = {"listen_addresses": "''", "unix_socket_directories": f"'{root}'",
                    "fsync": "on" if fsync else "off", "max_connections": "200",
                    "shared_buffers": "128MB", **(settings or {})}
            # In postgresql.conf (not on the command line), so a restart keeps them.
            with (root / "data" / "postgresql.conf").open("a") as conf:
                conf.write("".join(f"{k} = {v}\n" for k, v in opts.items()))
            server._start()
        except subprocess.CalledProcessError as exc:
            out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(
                errors="replace")
            msg = f"{' '.join(map(str, exc.cmd))} failed ({exc.returncode}):\n{out[-2000:]}"
            msg += f"\nserver log:\n{server.log()[-2000:]}"
            server.stop()
            raise PostgresStartFailed(msg) from exc
        except BaseException:
            server.stop()
            raise
        return server

    def _start(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")

    def _run(self, exe: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bindir / exe), *args]
        if self.user is not None:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.user, "--", *cmd]
            else:
                cmd = ["su", "-s", "/bin/sh", self.user, "-c", " ".join(map(_sh_quote, cmd))]
        return subprocess.run(cmd, check=True, capture_output=True, cwd=self.root)

    def url(self, dbname: str = "postgres", **params: str) -> str:
        """A ``postgresql://`` URL for ``dbname`` over the socket, plus ``params``."""
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in
                         {"host": str(self.root), "user": ROLE, **params}.items())
        return f"postgresql:///{dbname}?{query}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq key/value connection string for ``dbname``."""
        return f"host={self.root} user={ROLE} dbname={dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh, empty database; return its name."""
        import psycopg

        self._dbs += 1
        name = f"{prefix}_{os.getpid()}_{self._dbs}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def log(self) -> str:
        """The server's log so far (for failing tests)."""
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, recovery from the WAL at
        start; or ``fast``) and start it again on the same directory and socket."""
        data = str(self.root / "data")
        self._run("pg_ctl", "-D", data, "-m", mode, "-w", "stop")
        self._start()

    def stop(self) -> None:
        """Stop the server (fast shutdown, else immediate) and delete its directory.
        Idempotent."""
        if (self.root / "data" / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")
                    break
                except subprocess.CalledProcessError:
                    continue
        shutil.rmtree(self.root, ignore_errors=True)


def _sh_quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"
