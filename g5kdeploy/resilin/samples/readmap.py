"""Read mapping on Spark, standing for CloudBurst (thesis §4.4.2.2): every read is mapped to
every position of the reference where it matches with at most K mismatches (pigeonhole:
one of its K+1 seeds matches exactly; each candidate is then verified).

spark-submit readmap.py REFERENCE_URL READS_URL OUTPUT_URL K PARTITIONS

The reference is one line of ACGT; reads are `id TAB sequence` lines. Output: `id TAB
position TAB mismatches` lines under OUTPUT_URL (part-NNNNN, then _SUCCESS). Objects are
read and written with boto3 through the cluster's S3 settings (RESILIN_CLUSTER_DIR/s3.json),
as a user program on an EMR cluster uses its instance's credentials."""
import json
import os
import sys


def s3(config):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=config["endpoint"], region_name=config["region"],
                        aws_access_key_id=config["access_key"], aws_secret_access_key=config["secret_key"],
                        config=Config(s3={"addressing_style": "path"}))


def split(url):
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


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
    config = json.load(open(os.path.join(os.environ["RESILIN_CLUSTER_DIR"], "s3.json")))
    client = s3(config)
    reference = client.get_object(Bucket=split(ref_url)[0], Key=split(ref_url)[1])["Body"].read().decode().strip()
    lines = client.get_object(Bucket=split(reads_url)[0], Key=split(reads_url)[1])["Body"].read().decode().splitlines()
    reads = [tuple(x.split("\t", 1)) for x in lines if x]
    seed_len = len(reads[0][1]) // (k + 1)
    index = {}
    for i in range(len(reference) - seed_len + 1):
        index.setdefault(reference[i:i + seed_len], []).append(i)
    from pyspark import SparkContext
    sc = SparkContext(appName="readmap")
    shared_ref, shared_index = sc.broadcast(reference), sc.broadcast(index)
    out_bucket, out_key = split(out_url)
    out_key = out_key.rstrip("/")

    def task(n, items):
        body = "".join(x + "\n" for x in map_reads(items, shared_ref.value, shared_index.value, k, seed_len))
        s3(config).put_object(Bucket=out_bucket, Key=f"{out_key}/part-{n:05d}", Body=body.encode())
        yield len(body)
    sc.parallelize(reads, parts).mapPartitionsWithIndex(task).collect()
    client.put_object(Bucket=out_bucket, Key=f"{out_key}/_SUCCESS", Body=b"")
    sc.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
