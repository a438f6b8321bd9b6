"""Sky computing (thesis §3.3–3.7): BLASTx on a Dask platform spread over several sites."""
