"""Fixtures for end-to-end tests: a real `roentgen serve` process and real AWS clients."""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "e2e"
# Not ROENTGEN_*: roentgen reads every ROENTGEN_* variable as a setting and refuses unknown ones.
BINARY = Path(os.environ.get("E2E_ROENTGEN_BIN", ROOT / "target" / "debug" / "roentgen"))
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class Roentgen:
    """A running server: its addresses and the environment an SDK needs to reach it."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        # A trace size limit of 200 KB lets a test reach it with four documents.
        env = dict(os.environ, ROENTGEN_STORE__TRACE_IDLE_SECONDS="1", ROENTGEN_STORE__FLUSH_INTERVAL_SECONDS="0.5",
                   ROENTGEN_STORE__MAX_TRACE_BYTES="200000")
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--data-dir", str(data_dir),
             "--udp-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.udp = self.http = None
        log = []
        deadline = time.time() + 30
        while (self.udp is None or self.http is None) and time.time() < deadline:
            line = self.process.stderr.readline()
            log.append(line)
            if not line:
                raise RuntimeError(f"roentgen exited with {self.process.wait()}: {''.join(log)}")
            found = re.search(r"address=(\S+)", line)
            if found and "udp" in line:
                self.udp = found.group(1)
            elif found and "X-Ray API" in line:
                self.http = found.group(1)
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()
        self.endpoint = f"http://{self.http}"
        self.sdk_env = dict(
            os.environ,
            **FAKE_CREDENTIALS,
            AWS_XRAY_DAEMON_ADDRESS=f"tcp:{self.http} udp:{self.udp}",
            AWS_XRAY_TRACING_NAME="e2e",
        )

    def stop(self):
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0, "roentgen did not stop cleanly on SIGTERM"


@pytest.fixture(scope="session")
def roentgen():
    with tempfile.TemporaryDirectory() as data_dir:
        server = Roentgen(Path(data_dir))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def xray(roentgen):
    return boto3.client(
        "xray",
        endpoint_url=roentgen.endpoint,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def run_app(command, env):
    """Runs an instrumented app and returns the trace ids it printed."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def python_traces(roentgen):
    return run_app([sys.executable, "python_app.py"], roentgen.sdk_env)


@pytest.fixture(scope="session")
def node_traces(roentgen):
    env = dict(roentgen.sdk_env, NODE_PATH=str(CACHE / "node" / "node_modules"))
    return run_app(["node", "node_app.js"], env)


def aws_cli(roentgen, *args):
    """Runs the AWS CLI against roentgen and returns its parsed JSON output."""
    cli = Path(sys.executable).with_name("aws")
    done = subprocess.run(
        [str(cli), "xray", *args, "--endpoint-url", roentgen.endpoint, "--output", "json"],
        env=dict(os.environ, **FAKE_CREDENTIALS), capture_output=True, text=True, timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr
