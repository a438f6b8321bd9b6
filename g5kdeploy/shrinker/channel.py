"""Shrinker's channels: frames authenticated with a per-migration key (source <-> destination
agent) or the destination site's key (agent <-> agent), and the files those keys travel in.

A frame is a header (type; chunk index, round, or for PACKED how many full chunks it holds,
compressed together; payload length), the payload and a tag:
HMAC-SHA256, truncated to 128 bits, of the frame's sequence number in its direction and its
bytes, under that direction's key (derived from the channel key). A frame that is too long,
out of order, replayed or forged ends the channel before its payload is used. The channel is
not encrypted: RAM crosses the WAN in clear, as QEMU's own migration stream does."""
from __future__ import annotations

import hmac
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

from g5kdeploy.files import check_private

HEADER = struct.Struct("!BII")
SEQ = struct.Struct("!Q")
TAG = 16
FULL, DIGEST, UNIFORM, ROUND_END, FINAL, PULL, PULL_REPLY, HELLO, SNAPSHOT, CONT, CONTINUED, ABORT, ROUND_ACK, \
    VERIFIED, PACKED = range(1, 16)
COMPRESSIONS = ("zstd", "")      # of PACKED frames (several FULL chunks, compressed together); "": none
PACK_BYTES = 1 << 20             # a PACKED frame holds at most this much before compression
INDEX = struct.Struct("!I")
CONTROL = 4096             # longest HELLO, or any frame before the chunk size is agreed
KEYS = Path("/run/g5kdeploy-shrinker")    # on VMMs: root-only; <guest>.key per migration, peers.key per site
PEERS = "peers"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Refused(ValueError):
    """A frame that is not what an authenticated peer sends: the channel is closed."""


def _direction(key: bytes, role: str) -> bytes:
    return hmac.digest(key, role.encode(), "sha256")


class Channel:
    """Frames over a stream pair, authenticated both ways. `role` is this end's, `source` or
    `destination` (for peers: the fetching agent is the source)."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, key: bytes, role: str, limit: int = CONTROL):
        if len(key) < 32:
            raise ValueError("channel keys have at least 32 bytes")
        other = {"source": "destination", "destination": "source"}[role]
        self.inp, self.out, self.limit = inp, out, limit
        self.limits: dict[int, int] = {}         # a frame type's own limit, instead of `limit`
        self.send_key, self.receive_key = _direction(key, role), _direction(key, other)
        self.sent = self.received = 0

    def send(self, kind: int, index: int = 0, payload: bytes = b"") -> int:
        """Queue one frame (written out on `flush`); its size on the wire."""
        head = HEADER.pack(kind, index, len(payload))
        tag = hmac.digest(self.send_key, SEQ.pack(self.sent) + head + payload, "sha256")[:TAG]
        self.sent += 1
        self.out.write(head)
        self.out.write(payload)
        self.out.write(tag)
        return HEADER.size + len(payload) + TAG

    def flush(self) -> None:
        self.out.flush()

    def receive(self) -> tuple[int, int, bytes]:
        """The next frame, once its tag is checked."""
        return self.verify(*read_frame(self.inp, self.limit, self.limits))

    def verify(self, head: bytes, payload: bytes, tag: bytes) -> tuple[int, int, bytes]:
        """(type, index, payload) of a frame read with `read_frame`, if it is the next one
        the other end sent with this key."""
        expected = hmac.digest(self.receive_key, SEQ.pack(self.received) + head + payload, "sha256")[:TAG]
        if not hmac.compare_digest(tag, expected):
            raise Refused("a frame with a bad tag (wrong key, forged, replayed or reordered)")
        self.received += 1
        kind, index, _ = HEADER.unpack(head)
        return kind, index, payload


def read_frame(inp: BinaryIO, limit: int = CONTROL,
               limits: dict[int, int] | None = None) -> tuple[bytes, bytes, bytes]:
    """One frame's header, payload and tag, unchecked; refused if longer than its type's limit
    in `limits`, or else than `limit`."""
    head = _read(inp, HEADER.size)
    kind, _, length = HEADER.unpack(head)
    limit = (limits or {}).get(kind, limit)
    if length > limit:
        raise Refused(f"a {length}-byte frame (at most {limit} here)")
    return head, _read(inp, length) if length else b"", _read(inp, TAG)


def _read(inp: BinaryIO, n: int) -> bytes:
    data = inp.read(n)
    if len(data) < n:
        raise ConnectionError("peer closed the migration channel")
    return data


def compressor(compression: str, level: int = 3):
    """The compressor of PACKED frames for `compression` (None: "", full chunks sent as FULL)."""
    if compression != "zstd":
        return None
    import zstandard          # on VMMs only (python3-zstandard): the frontend never packs
    return zstandard.ZstdCompressor(level=level)


def decompressor(compression: str):
    """The decompressor of PACKED frames for `compression` (None: "", they are refused)."""
    if compression != "zstd":
        return None
    import zstandard
    return zstandard.ZstdDecompressor()


def pack(entries: list[tuple[int, bytes]], compressor) -> bytes:
    """A PACKED payload: (chunk index, digest + data) entries, compressed together."""
    return compressor.compress(b"".join(INDEX.pack(i) + body for i, body in entries))


def unpack(payload: bytes, count: int, body: int, decompressor) -> list[tuple[int, bytes]]:
    """The `count` entries of a PACKED payload whose bodies are `body` bytes, refused unless
    it decompresses to exactly that (never to more: the size is bounded before)."""
    if not 0 < count <= pack_count(body):
        raise Refused(f"a packed frame of {count} chunks")
    size = count * (INDEX.size + body)
    import zstandard
    try:       # the header's content size is checked first: decompress() would trust it
        if zstandard.frame_content_size(payload) != size:
            raise Refused(f"a packed frame that does not say {size} bytes")
        raw = decompressor.decompress(payload, max_output_size=size)
    except zstandard.ZstdError as e:
        raise Refused(f"a packed frame that does not decompress ({e})") from None
    if len(raw) != size:
        raise Refused(f"a packed frame of {len(raw)} bytes for {count} chunks")
    step = INDEX.size + body
    return [(INDEX.unpack_from(raw, k)[0], raw[k + INDEX.size:k + step]) for k in range(0, size, step)]


def pack_count(body: int) -> int:
    """The most entries a PACKED frame holds (at least one)."""
    return max(1, PACK_BYTES // (INDEX.size + body))


def packed_limit(body: int) -> int:
    """The longest PACKED payload: its entries and zstd's worst case (incompressible data
    grows by a few bytes per 128 KiB block, and the frame header)."""
    raw = pack_count(body) * (INDEX.size + body)
    return raw + raw // 256 + 1024


def kind_of(head: bytes) -> int:
    return HEADER.unpack(head)[0]


def read_key(name: str, keys: Path = KEYS, remove: bool = False) -> bytes:
    """The key in `<name>.key` of the key directory (removed once read, if asked)."""
    if not NAME.fullmatch(name):
        raise Refused(f"{name[:80]!r} is not a guest name")
    path = check_private(keys) / f"{name}.key"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise Refused(f"no key for {name} here: no such migration is expected") from None
    with os.fdopen(fd, "rb") as f:
        key = bytes.fromhex(f.read(200).decode())
    if remove:
        path.unlink()
    return key


def key_text(key: bytes) -> str:
    """How a key is written in its file."""
    return key.hex() + "\n"
