"""g5kdeploy: dynamic execution platforms over federated clouds, on Grid'5000 or in a box."""
import os
from pathlib import Path

__version__ = "0.1.0"
HOME = Path(os.environ.get("G5KDEPLOY_HOME", "/var/tmp/g5kdeploy"))   # the frontend's work directory
NODE_SOURCE = "/opt/g5kdeploy/src"   # where the g5kdeploy cookbook installs these sources on nodes
REDIS_PASSWORD = "/etc/g5kdeploy/redis.pass"   # on nodes: the site's Redis password (root only)
REDIS_CLI = f"REDISCLI_AUTH=$(cat {REDIS_PASSWORD}) redis-cli"    # redis-cli as root on a node


def work_dir(path: Path | None = None) -> Path:
    """The frontend's work directory (HOME), root's alone: refused if another user made it."""
    from g5kdeploy.errors import UserError
    from g5kdeploy.files import private_dir
    try:
        return private_dir(path or HOME)
    except PermissionError as e:
        raise UserError(f"work directory: {e}") from None


def on_node(module: str) -> str:
    """The shell command that runs `python3 -m <module>` from the sources on a node (Debian's python3)."""
    return f"env PYTHONPATH={NODE_SOURCE} /usr/bin/python3 -m {module}"
