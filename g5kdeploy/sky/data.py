"""A seeded BLASTx data set whose answers are known in advance: a protein database
(`makeblastdb`) and nucleotide queries back-translated from database proteins with
mutations, plus unrelated decoys. Standard library only (it also runs on nodes)."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from g5kdeploy.errors import UserError

# amino-acid background frequencies (Robinson & Robinson 1991)
AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"
FREQUENCIES = (7.8, 5.1, 4.5, 5.4, 1.9, 4.3, 6.3, 7.4, 2.2, 5.2, 9.0, 5.7, 2.2, 3.9, 5.2, 7.1, 5.8, 1.3, 3.2, 6.4)
CODONS = {aa: [] for aa in AMINO_ACIDS}
for _i, _aa in enumerate("FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"):
    if _aa != "*":
        CODONS[_aa].append("".join("TCAG"[(_i >> s) & 3] for s in (4, 2, 0)))
COMPLEMENT = str.maketrans("ACGT", "TGCA")
DB_NAME = "proteins"           # makeblastdb -out <dir>/proteins


@dataclass(frozen=True)
class Spec:
    """What to generate; the same spec and seed give the same files, byte for byte."""
    proteins: int = 2000
    protein_length: tuple[int, int] = (200, 400)
    queries: int = 240
    decoys: int = 60
    query_codons: tuple[int, int] = (100, 200)
    mutation_rate: float = 0.08     # nucleotide substitutions per base
    seed: int = 1

    def check(self) -> None:
        if self.proteins < 1 or self.queries < 0 or self.decoys < 0 or self.queries + self.decoys < 1:
            raise UserError("data: need proteins >= 1 and queries + decoys >= 1")
        if not 0 <= self.mutation_rate < 1:
            raise UserError("data: mutation_rate must be in [0, 1)")


def _protein(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(AMINO_ACIDS, weights=FREQUENCIES, k=length))


def _back_translate(rng: random.Random, protein: str, rate: float) -> str:
    bases = [b if rng.random() >= rate else rng.choice("ACGT".replace(b, ""))
             for b in "".join(rng.choice(CODONS[aa]) for aa in protein)]
    return "".join(bases)


def _fasta(records) -> str:
    return "".join(f">{name}\n" + "\n".join(seq[i:i + 70] for i in range(0, len(seq), 70)) + "\n"
                   for name, seq in records)


def generate(spec: Spec, out: Path) -> dict:
    """Write proteins.fasta, queries.fasta, truth.json (query -> source protein, None for
    decoys) and spec.json into out; return a summary."""
    spec.check()
    rng = random.Random(spec.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proteins = [(f"prot{i:06d}", _protein(rng, rng.randint(*spec.protein_length))) for i in range(spec.proteins)]
    queries, truth = [], {}
    for i in range(spec.queries):
        source, seq = rng.choice(proteins)
        n = min(rng.randint(*spec.query_codons), len(seq))
        start = rng.randint(0, len(seq) - n)
        dna = _back_translate(rng, seq[start:start + n], spec.mutation_rate)
        if rng.random() < 0.5:
            dna = dna.translate(COMPLEMENT)[::-1]            # blastx reads all six frames
        queries.append((f"q{i:06d}", dna))
        truth[f"q{i:06d}"] = source
    for i in range(spec.decoys):
        queries.append((f"decoy{i:06d}", "".join(rng.choices("ACGT", k=3 * rng.randint(*spec.query_codons)))))
        truth[f"decoy{i:06d}"] = None
    rng.shuffle(queries)
    (out / "proteins.fasta").write_text(_fasta(proteins))
    (out / "queries.fasta").write_text(_fasta(queries))
    (out / "truth.json").write_text(json.dumps(truth, indent=0, sort_keys=True))
    (out / "spec.json").write_text(json.dumps(asdict(spec)))
    return {"proteins": spec.proteins, "queries": len(queries),
            "database_residues": sum(len(s) for _, s in proteins),
            "query_bases": sum(len(s) for _, s in queries)}


def make_database(fasta: Path, out_dir: Path) -> Path:
    """makeblastdb -dbtype prot; return the database prefix (what blastx -db takes)."""
    if not shutil.which("makeblastdb"):
        raise UserError("makeblastdb not found: install Debian's ncbi-blast+ (./bootstrap.sh does)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / DB_NAME
    p = subprocess.run(["makeblastdb", "-dbtype", "prot", "-in", str(fasta), "-out", str(prefix),
                        "-title", DB_NAME, "-parse_seqids"], capture_output=True, text=True)
    if p.returncode:
        raise UserError(f"makeblastdb {fasta}: {p.stderr.strip()[-200:]}")
    return prefix
