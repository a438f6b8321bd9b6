"""Hadoop streaming on Spark: the application a streaming step runs (`spark-submit
streaming.py <hadoop-streaming arguments>`, on the cluster's master).

Hadoop's semantics, kept: the input (object URLs; a prefix means every object under it but
hidden `_`/`.` files) is cut in splits of at most `split.maxsize` bytes; a split's records are
the lines that *start* in it (the first partial line belongs to the previous split, the last
line is read past the split's end), fetched with HTTP Range requests. Each map task pipes its
lines through the mapper program; a mapper line is key TAB value (no tab: all key, empty
value). Records go to `numReduceTasks` reducers by a hash of the key (CRC-32: the same on
every executor), sorted by key (bytes) within each; each reducer pipes its sorted lines
through the reducer program and writes `part-NNNNN` under -output, then `_SUCCESS`. With 0
reducers the mappers' output is written as is. `-reducer aggregate` is Hadoop's Aggregate
package (LongValueSum, LongValueMax, LongValueMin, DoubleValueSum, UniqValueCount). An
existing output directory fails the step, as in Hadoop.

Arguments: -input URL (repeatable), -output URL, -mapper CMD, -reducer CMD, -combiner CMD,
-numReduceTasks N, -files URL,URL,..., -cmdenv K=V, and generic -D key=value before them
(mapreduce.job.reduces / mapred.reduce.tasks, mapreduce.input.fileinputformat.split.maxsize /
mapred.max.split.size). A mapper or reducer given as an object URL (as the thesis's EMR took
them) is fetched and run by its name."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from g5kdeploy.resilin import objects

DEFAULT_SPLIT = 64 << 20


class StreamingError(Exception):
    pass


@dataclass
class Job:
    inputs: list[str] = field(default_factory=list)
    output: str = ""
    mapper: str = "cat"
    reducer: str | None = "cat"
    combiner: str | None = None
    reducers: int = 1
    files: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    split_bytes: int = DEFAULT_SPLIT


SPLIT_KEYS = ("mapreduce.input.fileinputformat.split.maxsize", "mapred.max.split.size")
REDUCE_KEYS = ("mapreduce.job.reduces", "mapred.reduce.tasks")


def parse(args: list[str]) -> Job:
    """The hadoop-streaming command line, as EMR passes it (after `hadoop-streaming`)."""
    job, it = Job(), iter(args)
    for a in it:
        try:
            value = next(it) if a.startswith("-") and a not in ("-verbose", "-debug", "-lazyOutput") else None
        except StopIteration:
            raise StreamingError(f"{a} needs a value") from None
        if a in ("-D", "-jobconf"):
            key, _, v = value.partition("=")
            if key in SPLIT_KEYS:
                job.split_bytes = int(v)
            elif key in REDUCE_KEYS:
                job.reducers = int(v)
        elif a == "-input":
            job.inputs += [u for u in value.split(",") if u]
        elif a == "-output":
            job.output = value
        elif a == "-mapper":
            job.mapper = value
        elif a == "-reducer":
            job.reducer = None if value == "NONE" else value
        elif a == "-combiner":
            job.combiner = value
        elif a == "-numReduceTasks":
            job.reducers = int(value)
        elif a in ("-files", "-file", "-cacheFile"):
            job.files += [u.split("#")[0] for u in value.split(",") if u]
        elif a == "-cmdenv":
            k, _, v = value.partition("=")
            job.env[k] = v
        elif value is None or a not in ("-inputformat", "-outputformat", "-partitioner", "-libjars",
                                         "-archives", "-io"):
            raise StreamingError(f"unknown streaming argument {a!r}" if value is None
                                 else f"unknown streaming option {a}")
    if not job.inputs or not job.output:
        raise StreamingError("a streaming step needs -input and -output")
    if job.reducers < 0 or job.split_bytes <= 0:
        raise StreamingError("-numReduceTasks must be >= 0 and the split size > 0")
    if job.reducer is None:
        job.reducers = 0
    return job


def splits(size: int, split_bytes: int) -> list[tuple[int, int]]:
    """[start, end) of each split of an object of `size` bytes (an empty object: one)."""
    return [(a, min(a + split_bytes, size)) for a in range(0, max(size, 1), split_bytes)]


def split_lines(read, start: int, end: int, size: int, chunk: int = 4 << 20):
    """The lines whose first byte lies in [start, end) of an object of `size` bytes, the last
    one read past `end` if need be; `read(a, b)` gives bytes [a, b)."""
    pos = start
    if start > 0 and read(start - 1, start) != b"\n":       # a line began before: the previous split's
        while True:
            if pos >= size:
                return
            block = read(pos, min(pos + chunk, size))
            nl = block.find(b"\n")
            if nl >= 0:
                pos += nl + 1
                break
            pos += len(block)
    buf, i, at = b"", 0, pos          # `at`: where buf[i] is in the object
    while at < end:
        nl = buf.find(b"\n", i)
        if nl >= 0:
            yield buf[i:nl].decode("utf-8", "replace")
            at, i = at + nl + 1 - i, nl + 1
            continue
        tail = at + len(buf) - i
        if tail >= size:
            if i < len(buf):
                yield buf[i:].decode("utf-8", "replace")
            return
        buf, i = buf[i:] + read(tail, min(tail + chunk, size)), 0


def pipe(command: str, lines, cwd: str, env: dict[str, str]):
    """Lines through a program (a shell command, as Hadoop streaming runs it); its output lines.
    A program that fails fails the task (Spark retries it elsewhere)."""
    proc = subprocess.Popen(command, shell=True, cwd=cwd, env={**os.environ, **env, "PATH": f"{cwd}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []

    def feed():
        try:
            for line in lines:
                proc.stdin.write(line.encode() + b"\n")
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    writer.start()
    reader.start()
    for raw in proc.stdout:
        yield raw.decode("utf-8", "replace").rstrip("\n")
    writer.join()
    reader.join()
    if proc.wait() != 0:
        raise StreamingError(f"{command!r} exited with {proc.returncode}: {b''.join(errors)[-300:].decode(errors='replace')}")


def record(line: str) -> tuple[str, str]:
    key, _, value = line.partition("\t")
    return key, value


def partition_of(key: str, reducers: int) -> int:
    return zlib.crc32(key.encode()) % reducers


AGGREGATORS = {"LongValueSum": (int, sum), "LongValueMax": (int, max), "LongValueMin": (int, min),
               "DoubleValueSum": (float, sum)}


def aggregate(sorted_records):
    """Hadoop's Aggregate reducer: keys `Type:id` with values of that type, folded per key;
    output `id TAB result`."""
    def flush(key, values):
        kind, _, name = key.partition(":")
        if kind == "UniqValueCount":
            return f"{name}\t{len(set(values))}"
        if kind not in AGGREGATORS:
            raise StreamingError(f"aggregate: unknown aggregator {kind!r} in key {key!r}")
        cast, fold = AGGREGATORS[kind]
        result = fold(cast(v) for v in values)
        return f"{name}\t{result}"
    current, values = None, []
    for key, value in sorted_records:
        if key != current:
            if current is not None:
                yield flush(current, values)
            current, values = key, []
        values.append(value)
    if current is not None:
        yield flush(current, values)


def output_key(prefix: str, n: int) -> str:
    return f"{prefix.rstrip('/')}/part-{n:05d}" if prefix else f"part-{n:05d}"


def run(job: Job, config: dict, workdir: Path) -> dict:
    """The streaming job on the running SparkContext's cluster; what it did."""
    from pyspark import SparkContext, SparkFiles
    sc = SparkContext.getOrCreate()
    out = objects.parse(job.output, config["endpoint"])
    s3 = objects.client(config, out.endpoint)
    if s3.list_objects_v2(Bucket=out.bucket, Prefix=output_key(out.key, 0)[:-len("part-00000")], MaxKeys=1
                          ).get("KeyCount", 0):
        raise StreamingError(f"Output directory {job.output} already exists")
    for name in (job.mapper, job.reducer, job.combiner):
        if name and objects.is_url(name.split()[0]):
            job.files.append(name.split()[0])
    for url in dict.fromkeys(job.files):
        local = objects.get(config, url, workdir / url.rstrip("/").rsplit("/", 1)[-1])
        local.chmod(0o755)
        sc.addFile(str(local))

    def local_name(command):
        if not command:
            return command
        first, *rest = shlex.split(command)
        return shlex.join([first.rsplit("/", 1)[-1], *rest]) if objects.is_url(first) else command
    mapper, reducer, combiner = local_name(job.mapper), local_name(job.reducer), local_name(job.combiner)
    inputs = []
    for url in job.inputs:
        where = objects.parse(url, config["endpoint"])
        found = objects.listing(config, where)
        if not found:
            raise StreamingError(f"Input path does not exist: {url}")
        inputs += [(where.endpoint, where.bucket, key, size) for key, size in found]
    work = [(e, b, k, s0, s1, size) for (e, b, k, size) in inputs for (s0, s1) in splits(size, job.split_bytes)]
    env, reducers = job.env, job.reducers

    def map_split(index, items):
        for endpoint, bucket, key, start, end, size in items:
            where = objects.Location(endpoint, bucket, key)
            lines = split_lines(lambda a, b: objects.read_range(config, where, a, b), start, end, size)
            produced = pipe(mapper, lines, SparkFiles.getRootDirectory(), env)
            if combiner:
                produced = pipe(combiner, sorted(produced, key=lambda line: record(line)[0].encode()),
                                SparkFiles.getRootDirectory(), env)
            yield from produced

    mapped = sc.parallelize(work, len(work)).mapPartitionsWithIndex(map_split)
    if reducers == 0:
        def write_map(index, lines):
            body = "".join(line + "\n" for line in lines).encode()
            objects.client(config, out.endpoint).put_object(Bucket=out.bucket, Key=output_key(out.key, index), Body=body)
            yield len(body)
        written = mapped.mapPartitionsWithIndex(write_map).collect()
    else:
        def reduce_part(index, pairs):
            records = ((k.decode(), v) for k, v in pairs)
            lines = (aggregate(records) if reducer == "aggregate"
                     else pipe(reducer, (f"{k}\t{v}" for k, v in records), SparkFiles.getRootDirectory(), env))
            body = "".join(line + "\n" for line in lines).encode()
            objects.client(config, out.endpoint).put_object(Bucket=out.bucket, Key=output_key(out.key, index), Body=body)
            yield len(body)
        keyed = mapped.map(lambda line: (lambda k, v: (k.encode(), v))(*record(line)))
        written = keyed.repartitionAndSortWithinPartitions(
            reducers, partitionFunc=lambda key: zlib.crc32(key) % reducers).mapPartitionsWithIndex(reduce_part).collect()
    s3.put_object(Bucket=out.bucket, Key=output_key(out.key, 0).replace("part-00000", "_SUCCESS"), Body=b"")
    return {"splits": len(work), "reducers": reducers, "bytes_written": sum(written)}


def main(argv: list[str]) -> int:
    try:
        job = parse(argv)
    except (StreamingError, ValueError) as e:
        print(f"streaming: {e}", file=sys.stderr)
        return 2
    from pyspark import SparkContext
    sc = SparkContext(appName="streaming")
    try:
        done = run(job, objects.load_config(os.environ["RESILIN_CLUSTER_DIR"]), Path.cwd())
        print(f"streaming: {done}")
    except StreamingError as e:
        print(f"streaming: {e}", file=sys.stderr)
        return 1
    except Exception as e:        # the store or the engine: one line for the step's FailureDetails
        print(f"streaming: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        sc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
