"""A PostgreSQL server of the test's own, from Debian's postgresql package, that a test may stop and start.

The shared server of .ci/postgres.sh (TRAINPIPE_TEST_POSTGRES_URL) must not go away under
other tests; the outage tests run this one, in a temporary directory on a free port, with
pg_ctl. Without the package they skip, saying how to get it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


class PgServer:
    def __init__(self) -> None:
        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
            pytest.skip("no PostgreSQL driver: pip install 'trainpipe[postgres]'")
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): "
                        "apt-get install postgresql (.ci/run does) to run the database outage tests")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="trainpipe-pg-outage."))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start a PostgreSQL server as 'postgres'")
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "trainpipe")
        self.start()
        self.url = f"postgresql://trainpipe@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"{tool} failed: {out.stdout}\n{out.stderr}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def database(self) -> str:
        """A new, empty database on this server; its URL."""
        import sqlalchemy

        from trainpipe.sweep.study import with_driver

        name = f"sweep_{time.time_ns() % 10**12}"
        engine = sqlalchemy.create_engine(with_driver(self.url), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def close(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
