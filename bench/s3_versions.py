#!/usr/bin/env python3
"""What object versions cost on the Tessera gateway (run by
bench/s3.sh --workload versions, which starts `tessera dev --s3`).

- Disk: one object of --object-mib MiB in a versioned bucket, then
  --versions CopyObject calls of it onto itself (each a new version); the
  bytes under the chunkservers' folders before and after, against the
  object's size times its three copies.
- Restore: a copy of the first version onto the key by its versionId.
- Small overwrites: --overwrites PUTs of 4 KiB onto one key, one at a time,
  in a versioned and an unversioned bucket, beside writing and fsyncing a
  4 KiB file over and over on the local disk.

Prints a markdown table.
"""

import argparse
import configparser
import os
import subprocess
import sys
import time

import boto3
from botocore.config import Config

MiB = 1 << 20


def du(path):
    """Bytes of the files below path (as allocated on disk)."""
    out = subprocess.run(["du", "-sB1", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def chunk_bytes(data):
    return sum(du(os.path.join(data, d)) for d in sorted(os.listdir(data)) if d.startswith("chunk-"))


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--credentials", required=True)
    ap.add_argument("--data", required=True, help="tessera dev's data folder")
    ap.add_argument("--local", required=True, help="a folder on the local disk")
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--object-mib", type=int, default=64)
    ap.add_argument("--overwrites", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="100 versions of 16 MiB, 100 overwrites")
    a = ap.parse_args()
    if a.quick:
        a.versions, a.object_mib, a.overwrites = 100, 16, 100
    creds = configparser.ConfigParser()
    creds.read(a.credentials)
    c = boto3.client(
        "s3",
        endpoint_url=a.endpoint,
        aws_access_key_id=creds["default"]["aws_access_key_id"],
        aws_secret_access_key=creds["default"]["aws_secret_access_key"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    os.makedirs(a.local, exist_ok=True)
    rows = []

    versioned = "bench-versioned"
    c.create_bucket(Bucket=versioned)
    c.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    before = chunk_bytes(a.data)
    size = a.object_mib * MiB
    body = os.urandom(size)
    t = time.monotonic()
    first = c.put_object(Bucket=versioned, Key="big", Body=body)["VersionId"]
    put_s = time.monotonic() - t
    one_copy = chunk_bytes(a.data) - before
    progress(f"put {a.object_mib} MiB: {put_s:.2f} s, {one_copy / MiB:.1f} MiB on the chunkservers")
    t = time.monotonic()
    for i in range(a.versions):
        c.copy_object(
            Bucket=versioned,
            Key="big",
            CopySource={"Bucket": versioned, "Key": "big"},
            MetadataDirective="REPLACE",
            Metadata={"n": str(i)},
        )
        if (i + 1) % 100 == 0:
            progress(f"  {i + 1}/{a.versions} versions by CopyObject")
    copies_s = time.monotonic() - t
    after = chunk_bytes(a.data) - before
    listed = 0
    for page in c.get_paginator("list_object_versions").paginate(Bucket=versioned, Prefix="big"):
        listed += len(page.get("Versions", []))
    t = time.monotonic()
    restored = c.copy_object(
        Bucket=versioned, Key="big", CopySource={"Bucket": versioned, "Key": "big", "VersionId": first}
    )
    restore_s = time.monotonic() - t
    after_restore = chunk_bytes(a.data) - before
    ok = c.get_object(Bucket=versioned, Key="big")["Body"].read() == body
    # The local disk: one copy of the same file (no reflink), for scale.
    src = os.path.join(a.local, "big")
    with open(src, "wb") as f:
        f.write(body)
        os.fsync(f.fileno())
    t = time.monotonic()
    subprocess.run(["cp", "--reflink=never", src, src + ".copy"], check=True)
    subprocess.run(["sync", "-f", src + ".copy"], check=True)
    local_copy_s = time.monotonic() - t

    rows.append((f"{a.versions:,} versions of {a.object_mib} MiB by CopyObject onto itself",
                 f"{copies_s / a.versions * 1000:.1f} ms per copy; {listed:,} versions listed",
                 f"local `cp` of the file: {local_copy_s * 1000:.0f} ms"))
    rows.append(("chunkserver disk: one PUT (3 copies)", f"{one_copy / MiB:.1f} MiB", f"object {a.object_mib} MiB x 3 = {3 * a.object_mib} MiB"))
    rows.append((f"chunkserver disk after {a.versions:,} versions", f"{after / MiB:.1f} MiB ({after / max(one_copy, 1):.3f} of one PUT)", ""))
    rows.append(("restore the first version (copy by versionId)",
                 f"{restore_s * 1000:.1f} ms; disk after {after_restore / MiB:.1f} MiB; bytes match: {ok}",
                 f"version id {restored.get('CopySourceVersionId', '')[:8]}..."))

    # Small overwrites.
    plain = "bench-unversioned"
    c.create_bucket(Bucket=plain)
    small = os.urandom(4096)
    timings = {}
    for bucket in (plain, versioned):
        c.put_object(Bucket=bucket, Key="small", Body=small)
        t = time.monotonic()
        for _ in range(a.overwrites):
            c.put_object(Bucket=bucket, Key="small", Body=small)
        timings[bucket] = (time.monotonic() - t) / a.overwrites
        progress(f"{a.overwrites} overwrites of 4 KiB in {bucket}: {timings[bucket] * 1000:.2f} ms each")
    path = os.path.join(a.local, "small")
    t = time.monotonic()
    for _ in range(a.overwrites):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(small)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    local_s = (time.monotonic() - t) / a.overwrites
    rows.append((f"4 KiB overwrite of one key, unversioned ({a.overwrites})", f"{timings[plain] * 1000:.2f} ms",
                 f"local write+fsync+rename: {local_s * 1000:.2f} ms"))
    rows.append((f"4 KiB overwrite of one key, versioned ({a.overwrites})", f"{timings[versioned] * 1000:.2f} ms",
                 f"{timings[versioned] / timings[plain]:.2f} of unversioned"))

    print("| measure | Tessera | beside it |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # Leave nothing: delete every version.
    for bucket in (versioned, plain):
        entries = []
        for page in c.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                entries.append({"Key": v["Key"], "VersionId": v["VersionId"]})
        for i in range(0, len(entries), 1000):
            c.delete_objects(Bucket=bucket, Delete={"Objects": entries[i : i + 1000], "Quiet": True})
        c.delete_bucket(Bucket=bucket)


if __name__ == "__main__":
    main()
