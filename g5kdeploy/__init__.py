"""g5kdeploy: dynamic execution platforms over federated clouds, on Grid'5000 or in a box."""
import os
from pathlib import Path

__version__ = "0.1.0"
HOME = Path(os.environ.get("G5KDEPLOY_HOME", "/var/tmp/g5kdeploy"))   # the frontend's work directory
