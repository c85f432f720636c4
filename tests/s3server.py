"""A real S3-protocol server on 127.0.0.1 for the tests: moto's standalone server
(``python -m moto.server``), which speaks the S3 HTTP API, started by the test session
and stopped by its process id.

It listens on 127.0.0.1 only, on a free port; it stops itself after ``LIFETIME_S``
whatever happens to the test run (``timeout``), and the fixture stops it at the end by
its pid. The clients are pointed at it through the standard AWS variables
(``AWS_ENDPOINT_URL``, test credentials, ``AWS_EC2_METADATA_DISABLED``), so nothing ever
contacts another address.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LIFETIME_S = 1800
START_TIMEOUT_S = 60


def missing() -> str:
    """Why the server or the client cannot run here ('' when they can)."""
    for mod, pkg in (("moto", "moto[server]"), ("flask", "moto[server]"), ("s3fs", "s3fs"), ("fsspec", "fsspec")):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install {pkg}; .ci/run installs it)"
    if shutil.which("timeout") is None:
        return "coreutils' timeout is not on PATH"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """``with S3Server(log) as s3:``: ``s3.endpoint``, ``s3.env`` (the variables a client
    needs), ``s3.fs()`` (an s3fs filesystem on it), ``s3.pid``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "neurovfm-test",
            "AWS_SECRET_ACCESS_KEY": "neurovfm-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> S3Server:
        cmd = ["timeout", "-k", "5", str(LIFETIME_S), sys.executable, "-m", "moto.server"]
        cmd += ["-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer in {START_TIMEOUT_S} s") from None
                time.sleep(0.2)
        return self

    def fs(self):  # an s3fs filesystem on the server, without the instance cache
        import s3fs

        return s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint},
            skip_instance_cache=True,
        )

    def stop(self) -> None:
        """Stop the server by its process id (its process group: timeout and moto)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with_kill = self.proc.poll() is None
            if with_kill:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.stop()
