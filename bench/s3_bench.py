#!/usr/bin/env python3
"""Throughput of an S3 endpoint next to the local disk, measured in the same
run (machines here are shared and noisy: compare the ratios). bench/s3.sh
starts `tessera dev --s3` and runs this; it also runs alone against any S3
endpoint:

    python3 bench/s3_bench.py --endpoint http://127.0.0.1:23700 \\
        --credentials DIR/s3-credentials --local /var/tmp/s3-bench-local [--quick]

Workloads, each at concurrency 1 and 16 (one boto3 client per thread):
  - PUT of large objects, each a single PutObject streamed from a file, and
    GET of them, each a single GetObject streamed to a file (MiB/s);
  - PUT and GET of many 4 KiB objects (ops/s).
The local disk does the same with files in --local: writes (then one sync,
inside the timing) and reads (from a cold page cache when this runs as root).
Prints a markdown table: workload | concurrency | gateway | local disk | ratio.
"""

import argparse
import configparser
import os
import shutil
import sys
import threading
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import boto3
from botocore.config import Config

MiB = 1 << 20


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def drop_caches():
    """True when the page cache could be dropped (root), False otherwise."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Endpoint:
    def __init__(self, endpoint, credentials):
        cp = configparser.ConfigParser()
        if not cp.read(credentials) or "default" not in cp:
            sys.exit(f"no [default] section in {credentials}")
        self.endpoint = endpoint
        self.key = cp["default"]["aws_access_key_id"].strip()
        self.secret = cp["default"]["aws_secret_access_key"].strip()
        self.local = threading.local()

    def client(self, pool=4):
        """One client per thread and process (a forked worker must not
        share its parent's connections)."""
        c = getattr(self.local, "client", None)
        if c is not None and getattr(self.local, "pid", None) != os.getpid():
            c = None
        if c is None:
            c = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.key,
                aws_secret_access_key=self.secret,
                config=Config(
                    region_name="us-east-1",
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=10,
                    read_timeout=600,
                    retries={"max_attempts": 1, "mode": "standard"},
                    max_pool_connections=pool,
                ),
            )
            self.local.client = c
            self.local.pid = os.getpid()
        return c


_JOB = None


def _run_job(item):
    return _JOB(item)


def run_parallel(fn, items, concurrency):
    """Wall-clock seconds to run fn over items with this many worker
    processes. Processes, not threads: 16 threads of boto3 contend for the
    GIL so hard that they measure the client instead of the server."""
    global _JOB
    t = time.monotonic()
    if concurrency == 1:
        for i in items:
            fn(i)
    else:
        _JOB = fn
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(concurrency, mp_context=ctx) as pool:
            for _ in pool.map(_run_job, items, chunksize=max(1, len(items) // (concurrency * 8))):
                pass
        _JOB = None
    return time.monotonic() - t


def make_source(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(16 * MiB, left))
            f.write(b)
            left -= len(b)


# -- the gateway -------------------------------------------------------------


def s3_big(ep, bucket, source, size, count, concurrency, scratch):
    keys = [f"big/c{concurrency}/obj{i:02}" for i in range(count)]

    def put(key):
        with open(source, "rb") as f:
            ep.client(concurrency).put_object(Bucket=bucket, Key=key, Body=f, ContentLength=size)

    put_s = run_parallel(put, keys, concurrency)
    cold = drop_caches()

    def get(key):
        dst = os.path.join(scratch, key.replace("/", "_"))
        body = ep.client(concurrency).get_object(Bucket=bucket, Key=key)["Body"]
        with open(dst, "wb") as f:
            for chunk in body.iter_chunks(MiB):
                f.write(chunk)
        got = os.path.getsize(dst)
        if got != size:
            raise RuntimeError(f"GET {key}: {got} bytes, want {size}")

    get_s = run_parallel(get, keys, concurrency)
    for k in keys:
        os.unlink(os.path.join(scratch, k.replace("/", "_")))
    delete(ep, bucket, keys)
    return put_s, get_s, cold


def s3_small(ep, bucket, count, size, concurrency):
    keys = [f"small/c{concurrency}/k{i:05}" for i in range(count)]
    data = os.urandom(size)

    def put(key):
        ep.client(concurrency).put_object(Bucket=bucket, Key=key, Body=data)

    put_s = run_parallel(put, keys, concurrency)
    cold = drop_caches()

    def get(key):
        got = ep.client(concurrency).get_object(Bucket=bucket, Key=key)["Body"].read()
        if len(got) != size:
            raise RuntimeError(f"GET {key}: {len(got)} bytes, want {size}")

    get_s = run_parallel(get, keys, concurrency)
    delete(ep, bucket, keys)
    return put_s, get_s, cold


def delete(ep, bucket, keys):
    c = ep.client()
    for i in range(0, len(keys), 1000):
        r = c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})
        if r.get("Errors"):
            raise RuntimeError(f"delete_objects: {r['Errors'][:3]}")


# -- the local disk ----------------------------------------------------------


def local_big(root, source, size, count, concurrency):
    d = os.path.join(root, f"big-c{concurrency}")
    os.makedirs(d, exist_ok=True)
    paths = [os.path.join(d, f"obj{i:02}") for i in range(count)]

    def write(p):
        with open(source, "rb") as src, open(p, "wb") as dst:
            shutil.copyfileobj(src, dst, MiB)

    t = time.monotonic()
    run_parallel(write, paths, concurrency)
    os.sync()
    put_s = time.monotonic() - t
    cold = drop_caches()

    def read(p):
        n = 0
        with open(p, "rb") as f:
            while True:
                b = f.read(MiB)
                if not b:
                    break
                n += len(b)
        if n != size:
            raise RuntimeError(f"read {p}: {n} bytes, want {size}")

    get_s = run_parallel(read, paths, concurrency)
    shutil.rmtree(d)
    return put_s, get_s, cold


def local_small(root, count, size, concurrency):
    d = os.path.join(root, f"small-c{concurrency}")
    os.makedirs(d, exist_ok=True)
    paths = [os.path.join(d, f"k{i:05}") for i in range(count)]
    data = os.urandom(size)

    def write(p):
        with open(p, "wb") as f:
            f.write(data)

    t = time.monotonic()
    run_parallel(write, paths, concurrency)
    os.sync()
    put_s = time.monotonic() - t
    cold = drop_caches()

    def read(p):
        with open(p, "rb") as f:
            if len(f.read()) != size:
                raise RuntimeError(f"read {p}: short")

    get_s = run_parallel(read, paths, concurrency)
    shutil.rmtree(d)
    return put_s, get_s, cold


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--credentials", required=True, help="AWS shared-credentials file ([default])")
    ap.add_argument("--local", required=True, help="a directory on the local disk (emptied, then removed)")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--big-mib", type=int, default=1024, help="object size at concurrency 1 (1024)")
    ap.add_argument("--big16-mib", type=int, default=256, help="object size at concurrency 16 (256)")
    ap.add_argument("--small-count", type=int, default=10000, help="number of small objects (10000)")
    ap.add_argument("--small-kib", type=int, default=4, help="size of a small object in KiB (4)")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated thread counts (1,16)")
    ap.add_argument("--replicas", type=int, default=3, help="copies the cluster keeps, for the space check (3)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 64 MiB, 16 x 8 MiB, 300 small objects")
    args = ap.parse_args()
    if args.quick:
        args.big_mib, args.big16_mib, args.small_count = 64, 8, 300
    levels = [int(x) for x in args.concurrency.split(",")]
    big = {c: (args.big_mib if c == 1 else args.big16_mib) * MiB for c in levels}
    small = args.small_kib * 1024

    # Space: per level, the cluster's copies, the downloaded copies and the
    # local files, plus the source; the level's objects are deleted after it.
    need = 2 * max(big.values()) + max(c * s * (args.replicas + 2) for c, s in big.items())
    shutil.rmtree(args.local, ignore_errors=True)
    os.makedirs(args.local)
    free = shutil.disk_usage(args.local).free
    if free < need * 1.1:
        sys.exit(
            f"{free >> 30} GiB free in {args.local}, the large-object workloads need about {need >> 30} GiB: "
            "use smaller --big-mib / --big16-mib"
        )

    ep = Endpoint(args.endpoint, args.credentials)
    c = ep.client()
    try:
        c.head_bucket(Bucket=args.bucket)
    except Exception:  # noqa: BLE001 - any answer but 200: make it
        c.create_bucket(Bucket=args.bucket)
    source = os.path.join(args.local, "source")
    log(f"source file: {max(big.values()) // MiB} MiB of random bytes")
    make_source(source, max(big.values()))
    scratch = os.path.join(args.local, "downloads")
    os.makedirs(scratch)

    rows = []
    caches = set()
    for conc in levels:
        size = big[conc]
        count = 1 if conc == 1 else conc
        # the same file serves every size: PUT sends its first `size` bytes
        if size != os.path.getsize(source):
            src = os.path.join(args.local, f"source-{size}")
            with open(source, "rb") as f, open(src, "wb") as g:
                g.write(f.read(size))
        else:
            src = source
        log(f"gateway: PUT then GET {count} x {size // MiB} MiB at concurrency {conc}")
        sp, sg, cold1 = s3_big(ep, args.bucket, src, size, count, conc, scratch)
        log(f"local disk: write then read {count} x {size // MiB} MiB at concurrency {conc}")
        lp, lg, cold2 = local_big(args.local, src, size, count, conc)
        caches.add(cold1 and cold2)
        if src != source:
            os.unlink(src)
        mib = count * size / MiB
        what = f"{count} object{'s' if count > 1 else ''} of {size // MiB} MiB"
        rows.append((f"PUT {what} (one PutObject each)", conc, mib / sp, mib / lp, "MiB/s"))
        rows.append((f"GET {what} (one GetObject each, to a file)", conc, mib / sg, mib / lg, "MiB/s"))
    for conc in levels:
        log(f"gateway: PUT then GET {args.small_count} x {args.small_kib} KiB at concurrency {conc}")
        sp, sg, cold1 = s3_small(ep, args.bucket, args.small_count, small, conc)
        log(f"local disk: write then read {args.small_count} x {args.small_kib} KiB at concurrency {conc}")
        lp, lg, cold2 = local_small(args.local, args.small_count, small, conc)
        caches.add(cold1 and cold2)
        n = args.small_count
        rows.append((f"PUT {n} objects of {args.small_kib} KiB", conc, n / sp, n / lp, "ops/s"))
        rows.append((f"GET {n} objects of {args.small_kib} KiB", conc, n / sg, n / lg, "ops/s"))
    shutil.rmtree(args.local, ignore_errors=True)

    cache = "cold page cache (dropped before each read phase)" if caches == {True} else "warm page cache (not root)"
    print()
    print(f"S3 endpoint {args.endpoint} vs local disk, same run; reads from a {cache}; local writes end with a sync.")
    if any(big[c] != args.big_mib * MiB for c in levels):
        note = (
            f"Above concurrency 1 the large objects are {args.big16_mib} MiB each (--big16-mib), "
            f"not {args.big_mib} MiB (--big-mib)"
        )
        full = 16 * args.big_mib * MiB * (args.replicas + 2)
        if free < full * 1.1:
            note += f": 16 of {args.big_mib} MiB would need about {full >> 30} GiB of disk, {free >> 30} GiB were free"
        print(note + ".")
    print()
    print("| workload | concurrency | gateway | local disk | ratio |")
    print("|---|---|---|---|---|")
    for what, conc, g, l, unit in rows:
        print(f"| {what} | {conc} | {g:.0f} {unit} | {l:.0f} {unit} | {g / max(l, 1e-9):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
