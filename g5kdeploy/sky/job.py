"""The BLASTx job, submitted from the platform's master (as the thesis submitted its Hadoop
job): one Dask task per query chunk, each blastx against the worker's local database copy.
Prints one JSON line per event as it happens (the frontend follows them to extend the
platform or kill a worker mid-run) and writes the merged hit table.

    python3 -m g5kdeploy.sky.job SCHEDULER QUERIES DB CHUNKS OUT --tls DIR [--workers N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from g5kdeploy.sky import blast


def say(event: str, **fields) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def run_chunk(index: int, fasta: str, db: str) -> dict:
    """A task: blastx on one chunk, tagged with the Dask worker that ran it."""
    from distributed import get_worker
    return {**blast.chunk(index, fasta, db), "worker": get_worker().name}


def main(argv: list[str]) -> int:
    a = argparse.ArgumentParser(prog="g5kdeploy.sky.job")
    for name in ("scheduler", "queries", "db", "chunks", "out"):
        a.add_argument(name)
    a.add_argument("--workers", type=int, default=1, help="wait for this many workers before submitting")
    a.add_argument("--wait", type=float, default=600, help="... for at most this many seconds")
    a.add_argument("--tls", required=True, help="directory of the platform's cert.pem and key.pem")
    args = a.parse_args(argv)
    chunks = blast.split(Path(args.queries).read_text(), int(args.chunks))
    from distributed import Client, as_completed
    from distributed.security import Security
    cert, key = f"{args.tls}/cert.pem", f"{args.tls}/key.pem"
    security = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    with Client(args.scheduler, timeout=60, security=security) as client:
        client.wait_for_workers(args.workers, timeout=args.wait)
        say("submitted", tasks=len(chunks), workers=len(client.scheduler_info()["workers"]))
        hits = []
        # no reference is kept to a finished task: its result, once read, is released, so a
        # worker lost later holds nothing that Dask would have to compute again
        for future in as_completed([client.submit(run_chunk, i, text, args.db, pure=False, key=f"blastx-{i:05d}")
                                    for i, text in enumerate(chunks)]):
            r = future.result()
            future.release()
            found = r.pop("hits")
            hits += found
            say("task", **r, chunk_hits=len(found))
    blast.write(hits, args.out)
    say("done", hits=len(hits), sha256=blast.digest(hits), tasks=len(chunks))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (blast.BlastError, OSError, TimeoutError) as e:
        say("error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
