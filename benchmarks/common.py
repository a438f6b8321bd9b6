"""What every benchmark on the default testbed starts with."""
import os
import tempfile

from g5kdeploy.testbed.local import LocalTestbed


def testbed() -> LocalTestbed:
    """The default testbed (brought up if needed); results go to a temporary directory."""
    os.environ["G5KDEPLOY_RESULTS"] = tempfile.mkdtemp(prefix="g5kdeploy-bench-")
    return LocalTestbed.running()
