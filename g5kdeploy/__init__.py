"""g5kdeploy: dynamic execution platforms over federated clouds, on Grid'5000 or in a box."""
import os
from pathlib import Path

__version__ = "0.1.0"
HOME = Path(os.environ.get("G5KDEPLOY_HOME", "/var/tmp/g5kdeploy"))   # the frontend's work directory
NODE_SOURCE = "/opt/g5kdeploy/src"   # where the g5kdeploy cookbook installs these sources on nodes


def on_node(module: str) -> str:
    """The shell command that runs `python3 -m <module>` from the sources on a node (Debian's python3)."""
    return f"env PYTHONPATH={NODE_SOURCE} /usr/bin/python3 -m {module}"
