"""The sample workloads of the thesis's evaluation (§4.4.2), generated here (seeded) with
their sequential answers: Word Count on a text collection of uneven files (as EMR's World
Factbook sample: a few large files and a small tail), as a streaming step; read mapping
(standing for CloudBurst) as an application step. The programs are in samples/, uploaded
to the cloud's storage as a user would."""
from __future__ import annotations

import random
import re
from collections import Counter
from importlib import resources
from pathlib import Path

PROGRAMS = resources.files(__package__).joinpath("samples")
WORDS = re.compile(r"[a-z0-9']+")


def program(name: str) -> Path:
    return Path(str(PROGRAMS.joinpath(name)))


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def corpus(total_bytes: int, files: int = 12, seed: int = 0) -> list[str]:
    """`files` texts of about `total_bytes` in all, Zipf-distributed words: the first 3/4 of
    the files hold most of the bytes, the last quarter are small (the Factbook's shape)."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = [1 / (r + 1) for r in range(len(words))]
    big = max(1, files * 3 // 4)
    shares = [rng.uniform(0.7, 1.3) * 30 for _ in range(big)] + [rng.uniform(0.2, 1.0) for _ in range(files - big)]
    texts = []
    for share in shares:
        want, out, size = int(total_bytes * share / sum(shares)), [], 0
        while size < want:
            line = " ".join(rng.choices(words, weights, k=rng.randint(4, 16)))
            if rng.random() < 0.1:
                line = line.capitalize() + "."
            out.append(line)
            size += len(line) + 1
        texts.append("\n".join(out) + "\n")
    return texts


def word_counts(texts: list[str]) -> Counter:
    """The sequential answer of Word Count (the mapper's own tokenization)."""
    c: Counter = Counter()
    for t in texts:
        c.update(WORDS.findall(t.lower()))
    return c


def counts_of(lines: list[str]) -> Counter:
    """A Word Count output (`word TAB count` lines of every part) as a Counter; a word twice is
    an error (reducers by hash partition the words)."""
    c: Counter = Counter()
    for line in lines:
        word, _, n = line.partition("\t")
        if word in c:
            raise ValueError(f"word {word!r} in two output lines")
        c[word] = int(n)
    return c


def genome(length: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


def reads(reference: str, count: int, length: int = 36, mismatches: int = 2, seed: int = 1) -> list[tuple[str, str, int]]:
    """(id, sequence, true position): reads sampled from the reference with up to
    `mismatches` substitutions each."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        at = rng.randrange(len(reference) - length)
        seq = list(reference[at:at + length])
        for p in rng.sample(range(length), rng.randint(0, mismatches)):
            seq[p] = rng.choice([b for b in "ACGT" if b != seq[p]])
        out.append((f"r{n}", "".join(seq), at))
    return out


def read_hits(reference: str, reads_: list[tuple[str, str, int]], k: int) -> set[tuple[str, int, int]]:
    """The sequential answer of read mapping: every (read, position, mismatches) within k,
    by the sample program's own function, in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("readmap", program("readmap.py"))
    readmap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readmap)
    seed_len = len(reads_[0][1]) // (k + 1)
    index: dict[str, list[int]] = {}
    for i in range(len(reference) - seed_len + 1):
        index.setdefault(reference[i:i + seed_len], []).append(i)
    hits = set()
    for line in readmap.map_reads([(r, s) for r, s, _ in reads_], reference, index, k, seed_len):
        rid, at, mism = line.split("\t")
        hits.add((rid, int(at), int(mism)))
    return hits
