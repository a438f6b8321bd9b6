"""Cloud storage read bandwidth from the cluster (thesis §4.4.3, `hadoop fs -cat` to
/dev/null): READERS tasks, one per executor, each read the whole object at once with 8 MiB
Range requests and time it.

spark-submit cat.py OBJECT_URL READERS OUTPUT_URL

Output: one JSON object per reader (reader, host, bytes, start, end) in OUTPUT_URL."""
import json
import os
import socket
import sys
import time

from g5kdeploy.resilin import objects

CHUNK = 8 << 20


def main(argv):
    url, readers, out = argv[0], int(argv[1]), argv[2]
    config = objects.load_config(os.environ["RESILIN_CLUSTER_DIR"])
    where = objects.parse(url, config["endpoint"])
    size = objects.client(config, where.endpoint).head_object(Bucket=where.bucket, Key=where.key)["ContentLength"]
    from pyspark import SparkContext
    sc = SparkContext(appName="cat")
    barrier = sc.parallelize(range(readers), readers).barrier()     # every reader starts together

    def read(index, _):
        from pyspark import BarrierTaskContext
        client = objects.client(config, where.endpoint)
        BarrierTaskContext.get().barrier()
        start, got = time.time(), 0
        for at in range(0, size, CHUNK):
            body = client.get_object(Bucket=where.bucket, Key=where.key,
                                     Range=f"bytes={at}-{min(at + CHUNK, size) - 1}")["Body"]
            while block := body.read(1 << 20):
                got += len(block)
        yield json.dumps({"reader": index, "host": socket.gethostname(), "bytes": got, "start": start,
                          "end": time.time()})
    lines = barrier.mapPartitionsWithIndex(read).collect()
    dest = objects.parse(out, config["endpoint"])
    objects.client(config, dest.endpoint).put_object(Bucket=dest.bucket, Key=dest.key,
                                                     Body=("\n".join(lines) + "\n").encode())
    sc.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
