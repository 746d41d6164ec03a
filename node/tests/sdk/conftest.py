"""Starts a real `meridian` process (and the fake upstream it calls) for the
official-SDK tier. Binaries come from MERIDIAN_BIN / FAKE_UPSTREAM_BIN, or the
workspace's debug build."""

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
MASTER_KEY = "sk-sdk-tier-master"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: not up after 30 s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def gateway():
    meridian = os.environ.get("MERIDIAN_BIN", str(TARGET / "debug" / "meridian"))
    fake = os.environ.get("FAKE_UPSTREAM_BIN", str(TARGET / "debug" / "fake-upstream"))
    work = Path(tempfile.mkdtemp(prefix="meridian-sdk-"))
    procs = []
    try:
        fake_port = _free_port()
        fake_log = work / "fake.log"
        procs.append(subprocess.Popen([fake, "--port", str(fake_port)], stdout=fake_log.open("w"), stderr=subprocess.STDOUT))
        # The fake has no health route; any HTTP answer (404) means it is up.
        _wait_until_tcp(fake_port)

        port = _free_port()
        log = work / "meridian.log"
        env = dict(os.environ,
                   MERIDIAN_MASTER_KEY=MASTER_KEY,
                   FAKE_UPSTREAM=f"http://127.0.0.1:{fake_port}",
                   FAKE_UPSTREAM_V1=f"http://127.0.0.1:{fake_port}/v1")
        cmd = [meridian, "serve", "--config", str(Path(__file__).with_name("config.yaml")),
               "--data-dir", str(work / "data"), "--port", str(port)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{base}/health/liveliness", procs[-1], log)
        yield base
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_until_tcp(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after 30 s")


@pytest.fixture
def oai(gateway):
    return openai.OpenAI(api_key=MASTER_KEY, base_url=f"{gateway}/v1", max_retries=0)


@pytest.fixture
def claude(gateway):
    return anthropic.Anthropic(api_key=MASTER_KEY, base_url=gateway, max_retries=0)
