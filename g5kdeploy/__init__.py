"""g5kdeploy: dynamic execution platforms over federated clouds, on Grid'5000 or in a box."""
__version__ = "0.1.0"
