"""Read mapping on Spark, standing for CloudBurst (thesis §4.4.2.2): every read is mapped to
every position of the reference where it matches with at most K mismatches (pigeonhole:
one of its K+1 seeds matches exactly; each candidate is then verified).

spark-submit readmap.py REFERENCE_URL READS_URL OUTPUT_URL K PARTITIONS

The reference is one line of ACGT; reads are `id TAB sequence` lines. Output: `id TAB
position TAB mismatches` lines under OUTPUT_URL (part-NNNNN, then _SUCCESS). Objects are
read and written through the cluster's S3 settings (g5kdeploy.resilin.objects, on every node
of a Resilin cluster), as a program on an EMR cluster uses its instance's credentials."""
import os
import sys

from g5kdeploy.resilin import objects


def read(config, url):
    where = objects.parse(url, config["endpoint"])
    return objects.client(config, where.endpoint).get_object(Bucket=where.bucket, Key=where.key)["Body"].read().decode()


def seeds(length, k):
    size = length // (k + 1)
    return [(i * size, size) for i in range(k + 1)]


def map_reads(reads, reference, index, k, seed_len):
    for rid, seq in reads:
        found = set()
        for start, size in seeds(len(seq), k):
            for pos in index.get(seq[start:start + size], ()):
                at = pos - start
                if 0 <= at <= len(reference) - len(seq) and at not in found:
                    mism = sum(1 for a, b in zip(seq, reference[at:at + len(seq)]) if a != b)
                    if mism <= k:
                        found.add(at)
                        yield f"{rid}\t{at}\t{mism}"


def main(argv):
    ref_url, reads_url, out_url, k, parts = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    config = objects.load_config(os.environ["RESILIN_CLUSTER_DIR"])
    reference = read(config, ref_url).strip()
    lines = read(config, reads_url).splitlines()
    reads = [tuple(x.split("\t", 1)) for x in lines if x]
    seed_len = len(reads[0][1]) // (k + 1)
    index = {}
    for i in range(len(reference) - seed_len + 1):
        index.setdefault(reference[i:i + seed_len], []).append(i)
    from pyspark import SparkContext
    sc = SparkContext(appName="readmap")
    shared_ref, shared_index = sc.broadcast(reference), sc.broadcast(index)
    out = objects.parse(out_url.rstrip("/"), config["endpoint"])

    def task(n, items):
        body = "".join(x + "\n" for x in map_reads(items, shared_ref.value, shared_index.value, k, seed_len))
        objects.client(config, out.endpoint).put_object(Bucket=out.bucket, Key=f"{out.key}/part-{n:05d}",
                                                        Body=body.encode())
        yield len(body)
    sc.parallelize(reads, parts).mapPartitionsWithIndex(task).collect()
    objects.client(config, out.endpoint).put_object(Bucket=out.bucket, Key=f"{out.key}/_SUCCESS", Body=b"")
    sc.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
