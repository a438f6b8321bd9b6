"""Chunks of guest RAM: digests, uniform chunks, reading them from a RAM file."""
from __future__ import annotations

import hashlib
import os
from typing import Iterator

ALGORITHMS = {"sha1": 20, "sha256": 32, "blake2b": 20}     # digest sizes (blake2b truncated to 160 bits)
MIN_CHUNK, MAX_CHUNK = 64, 65536
READ_BLOCK = 1 << 20


def hostport(text: str) -> tuple[str, int]:
    """`198.19.2.2:7700` -> ("198.19.2.2", 7700)"""
    host, port = text.rsplit(":", 1)
    return host, int(port)


def site_redis(address: str):
    """A client of a site's Redis (`host:port`, with this node's password for it if it has
    one), and the errors meaning it is unreachable."""
    import redis
    from g5kdeploy import REDIS_PASSWORD
    host, port = hostport(address)
    try:
        with open(REDIS_PASSWORD) as f:
            password = f.read().strip()
    except FileNotFoundError:
        password = None
    return (redis.Redis(host=host, port=port, password=password, socket_timeout=5),
            (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


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


def read_blocks(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, block of up to 1 MiB) over a file with pread (never mmap: it would fill a
    sparse file)."""
    offset = 0
    while offset < size:
        block = os.pread(fd, min(READ_BLOCK, size - offset), offset)
        if not block:
            break
        yield offset, block
        offset += len(block)


def read_chunks(fd: int, size: int, chunk: int, blocks: list[bytes] | None = None) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) over a file, in order; its blocks are appended to `blocks` if given."""
    for offset, block in read_blocks(fd, size):
        if blocks is not None:
            blocks.append(block)
        for i in range(0, len(block), chunk):
            yield (offset + i) // chunk, block[i:i + chunk]


def changed_chunks(fd: int, size: int, chunk: int, previous: list[bytes]) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of the chunks that differ from `previous` (the blocks last sent), which
    is updated: comparing bytes is ~10x cheaper than re-hashing every chunk, an unchanged
    block is skipped at once, and keeping blocks (not one bytearray) saves two copies."""
    for k, (offset, block) in enumerate(read_blocks(fd, size)):
        before = previous[k]
        if before == block:
            continue
        for i in range(0, len(block), chunk):
            data = block[i:i + chunk]
            if before[i:i + chunk] != data:
                yield (offset + i) // chunk, data
        previous[k] = block


def read_into(fd: int, buffer: bytearray) -> None:
    """Fill `buffer` with the file's first len(buffer) bytes (no new allocation)."""
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        n = os.preadv(fd, [view[done:]], done)
        if n <= 0:
            raise OSError(f"short read at byte {done} of {len(buffer)}")
        done += n


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else \
            hashlib.sha256(f.read()).hexdigest()
