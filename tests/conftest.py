import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "small.toml"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="testbed tests need root")
        for item in items:
            if "testbed" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def small_description():
    from g5kdeploy.testbed import description
    return description.load(SMALL)


def make_room() -> None:
    """The machine has one local testbed: destroy one that is up (or left by a failed test,
    which that test reports itself) so that the next tests do not fail in cascade."""
    from g5kdeploy.testbed.local import destroy, is_up
    if is_up():
        assert destroy() == []


@contextmanager
def own_testbed(desc):
    """This machine's one local testbed, for a test module: made room for, brought up,
    destroyed afterwards with nothing left over."""
    from g5kdeploy.testbed.local import LocalTestbed, leftovers
    make_room()
    tb = LocalTestbed.up(desc)
    yield tb
    tb.destroy()
    assert leftovers() == []


@pytest.fixture(scope="session", autouse=True)
def results_dir(tmp_path_factory):
    """Run directories of the tests go to a temporary directory, never into results/."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("G5KDEPLOY_RESULTS", str(tmp_path_factory.mktemp("results")))
        yield


@pytest.fixture
def no_testbed_up():
    """Tests that bring up their own testbed need the machine free of another one."""
    make_room()


def invoke(*args, user=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` like a user would, from the project directory."""
    argv = [sys.executable, "-m", "invoke", *args]
    env = dict(os.environ)
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        env["HOME"] = "/tmp"
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory):
    """A real redis-server of our own on a free local port."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: run ./bootstrap.sh")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--dir", str(d)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    p.terminate()
    p.wait()
