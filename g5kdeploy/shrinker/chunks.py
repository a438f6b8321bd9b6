"""Chunks of guest RAM: digests, uniform chunks, and the frames agents exchange."""
from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO, Iterator

ALGORITHMS = {"sha1": 20, "sha256": 32, "blake2b": 20}     # digest sizes (blake2b truncated to 160 bits)
READ_BLOCK = 1 << 20

# frame: type (1 byte), chunk index or round (4), payload length (4), payload
HEADER = struct.Struct("!BII")
FULL, DIGEST, UNIFORM, ROUND_END, FINAL, PULL, PULL_REPLY, HELLO, VERIFIED, CONT, CONTINUED, ABORT = range(1, 13)


def digest_fn(name: str):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown digest {name!r}: use one of {', '.join(ALGORITHMS)}")
    if name == "blake2b":
        return lambda b: hashlib.blake2b(b, digest_size=20).digest()
    return lambda b, h=getattr(hashlib, name): h(b).digest()


def uniform(chunk: bytes) -> int | None:
    """The byte a chunk is made of, if it is one repeated byte (sent as that byte)."""
    first = chunk[:1]
    return first[0] if first and chunk.count(first) == len(chunk) else None


def read_chunks(fd: int, size: int, chunk: int) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) over a file with pread (never mmap: it would fill a sparse file)."""
    offset = 0
    while offset < size:
        block = os.pread(fd, min(READ_BLOCK, size - offset), offset)
        if not block:
            break
        for i in range(0, len(block), chunk):
            yield (offset + i) // chunk, block[i:i + chunk]
        offset += len(block)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            block = os.pread(fd, READ_BLOCK, offset)
            h.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def send(out: BinaryIO, kind: int, index: int = 0, payload: bytes = b"") -> int:
    out.write(HEADER.pack(kind, index, len(payload)))
    out.write(payload)
    return HEADER.size + len(payload)


def receive(inp: BinaryIO) -> tuple[int, int, bytes]:
    head = inp.read(HEADER.size)
    if len(head) < HEADER.size:
        raise ConnectionError("peer closed the migration channel")
    kind, index, length = HEADER.unpack(head)
    payload = inp.read(length) if length else b""
    if len(payload) < length:
        raise ConnectionError("peer closed the migration channel")
    return kind, index, payload
