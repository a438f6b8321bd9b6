"""BLASTx on query chunks and the hit table they make (standard library: runs on nodes).

A hit table is blastx's 12-column tabular output (-outfmt 6); its canonical form (lines
sorted) does not depend on how the queries were split, so a distributed run is checked
against the sequential one by digest.

    python3 -m g5kdeploy.sky.blast sequential QUERIES DB OUT   # JSON: time_s, hits, sha256
"""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

EVALUE = "1e-5"
FIELDS = ("qseqid", "sseqid", "pident", "length", "mismatch", "gapopen", "qstart", "qend", "sstart", "send",
          "evalue", "bitscore")


class BlastError(RuntimeError):
    pass


def records(fasta: str) -> list[str]:
    """The FASTA records of a text, each with its header line."""
    return [">" + r.strip("\n") for r in ("\n" + fasta).split("\n>")[1:] if r.strip()]


def split(fasta: str, chunks: int) -> list[str]:
    """`chunks` FASTA texts of consecutive records, sizes differing by at most one record."""
    recs = records(fasta)
    if not recs:
        raise BlastError("the query file holds no FASTA record")
    n = min(chunks, len(recs))
    bounds = [round(i * len(recs) / n) for i in range(n + 1)]
    return ["\n".join(recs[a:b]) + "\n" for a, b in zip(bounds, bounds[1:])]


def blastx(fasta: str, db: str, threads: int = 1) -> list[str]:
    """blastx of a FASTA text against a protein database: the hit lines."""
    if not shutil.which("blastx"):
        raise BlastError("blastx not found: install Debian's ncbi-blast+")
    if not Path(db + ".pin").exists() and not Path(db + ".pal").exists():
        raise BlastError(f"no protein database at {db}: build it with makeblastdb")
    p = subprocess.run(["blastx", "-db", db, "-outfmt", "6", "-evalue", EVALUE, "-num_threads", str(threads)],
                       input=fasta, capture_output=True, text=True)
    if p.returncode:
        raise BlastError(f"blastx: {p.stderr.strip()[-300:]}")
    return [line for line in p.stdout.splitlines() if line]


def chunk(index: int, fasta: str, db: str) -> dict:
    """One task: blastx on one chunk, timed where it ran."""
    start = time.time()
    hits = blastx(fasta, db)
    return {"chunk": index, "host": socket.gethostname(), "start": start, "end": time.time(),
            "queries": fasta.count(">"), "hits": hits}


def canonical(hits: list[str]) -> list[str]:
    return sorted(hits)


def digest(hits: list[str]) -> str:
    return hashlib.sha256("\n".join(canonical(hits)).encode()).hexdigest()


def recall(hits: list[str], truth: dict[str, str | None]) -> dict:
    """How many queries' best hit is the protein they came from; how many decoys hit anything."""
    best: dict[str, tuple[float, str]] = {}
    for line in hits:
        f = line.split("\t")
        q, s, score = f[0], f[1], float(f[11])
        if q not in best or score > best[q][0]:
            best[q] = (score, s.split("|")[-1])
    real = [q for q, src in truth.items() if src]
    return {"true_found": sum(1 for q in real if best.get(q, (0, ""))[1] == truth[q]), "true_total": len(real),
            "decoys_hit": sum(1 for q, src in truth.items() if not src and q in best)}


def write(hits: list[str], out: str | Path) -> None:
    Path(out).write_text("".join(line + "\n" for line in canonical(hits)))


def sequential(queries: str, db: str, out: str) -> dict:
    """The reference run: one blastx process over every query; its hit table into out."""
    t0 = time.monotonic()
    hits = blastx(Path(queries).read_text(), db)
    write(hits, out)
    return {"time_s": time.monotonic() - t0, "hits": len(hits), "sha256": digest(hits),
            "host": socket.gethostname()}


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "sequential":
        sys.exit("usage: python3 -m g5kdeploy.sky.blast sequential QUERIES DB OUT")
    try:
        print(json.dumps(sequential(*sys.argv[2:])))
    except BlastError as e:
        print(json.dumps({"error": str(e)}))
        sys.exit(1)
