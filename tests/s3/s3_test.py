#!/usr/bin/env python3
"""S3 conformance checks for the Tessera S3 gateway.

Runs real S3 clients (boto3 and the `aws` command line) against a running
gateway and checks what comes back, one named check at a time:

    S3_ENDPOINT=http://127.0.0.1:31000 \\
    AWS_SHARED_CREDENTIALS_FILE=DIR/s3-credentials \\
    TESSERA_MOUNT=/mnt/tessera  (optional: empty or unset skips the mount checks) \\
    AWS_CLI=$HOME/.cache/tessera/venv/bin/aws \\
        python3 tests/s3/s3_test.py [--only NAME[,NAME]] [--list] [--keep] [--fail-fast]

Every check prints one line (PASS, FAIL or SKIP, with its duration); a failure
prints why. The last line is `s3: N passed, N failed, N skipped`, and the exit
status is 0 only when nothing failed. Each check runs under a watchdog: a check
that outlives its time limit dumps the stacks of every thread and ends the run
with status 1.

S3_TEST_LENIENT=moto skips the checks of what only Tessera promises (keys that
cannot be paths, KeyConflict, signature and access checks, the mount) unless
--only names them, and forgives moto's known deviations from S3 (each printed
as it is forgiven); it exists only to validate this script against
moto_server, which accepts any signature. Never set it against Tessera. S3_TEST_HEADS sets the number of concurrent HEADs (10000).
"""

import argparse
import asyncio
import collections
import configparser
import datetime
import faulthandler
import hashlib
import http.client as http_client
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

try:
    import boto3
    import botocore
    import botocore.handlers
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError as e:
    sys.exit(f"{e}: run this with the venv's python ($TESSERA_PYTHON; .ci/run makes it), or pip install boto3 awscli")

MiB = 1 << 20
REGION = "us-east-1"

# ---------------------------------------------------------------------------
# Set-up: environment, clients, helpers


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


class Env:
    endpoint = ""
    key = ""
    secret = ""
    mount = None
    aws_cli = None
    lenient = ""
    tmp = ""
    run = ""
    heads = 10000


ENV = Env()
BUCKETS = []  # buckets made by this run, deleted at the end
_LOCK = threading.Lock()


def note(msg):
    print(f"      {msg}", flush=True)


def setup_env():
    endpoint = os.environ.get("S3_ENDPOINT", "").rstrip("/")
    creds = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "")
    if not endpoint or not creds:
        sys.exit("S3_ENDPOINT and AWS_SHARED_CREDENTIALS_FILE must be set")
    parser = configparser.ConfigParser()
    if not parser.read(creds) or "default" not in parser:
        sys.exit(f"no [default] section in the credentials file {creds}")
    ENV.endpoint = endpoint
    ENV.key = parser["default"]["aws_access_key_id"].strip()
    ENV.secret = parser["default"]["aws_secret_access_key"].strip()
    ENV.mount = os.environ.get("TESSERA_MOUNT") or None
    # The tessera binary and a client config, for checks that manage keys.
    ENV.tessera_bin = os.environ.get("TESSERA_BIN") or None
    ENV.tessera_config = os.environ.get("TESSERA_CLIENT_CONFIG") or None
    ENV.lenient = os.environ.get("S3_TEST_LENIENT", "")
    ENV.heads = int(os.environ.get("S3_TEST_HEADS", "10000"))
    ENV.aws_cli = (
        os.environ.get("AWS_CLI")
        or (
            os.path.join(os.path.dirname(sys.executable), "aws")
            if os.path.exists(os.path.join(os.path.dirname(sys.executable), "aws"))
            else None
        )
        or shutil.which("aws")
    )
    ENV.tmp = tempfile.mkdtemp(prefix="tessera-s3-test-")
    ENV.run = "%06x" % random.getrandbits(24)

    # Nothing from the user's own AWS set-up may leak in: only the
    # credentials file we were given, region us-east-1, path-style
    # addressing, one attempt per request, no proxy for loopback.
    for var in list(os.environ):
        if var.startswith("AWS_") and var not in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CLI"):
            del os.environ[var]
        if var.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del os.environ[var]
    config = os.path.join(ENV.tmp, "aws-config")
    with open(config, "w") as f:
        f.write(
            "[default]\n"
            f"region = {REGION}\n"
            "max_attempts = 1\n"
            "retry_mode = standard\n"
            "cli_pager =\n"
            "s3 =\n"
            "    addressing_style = path\n"
        )
    os.environ["AWS_CONFIG_FILE"] = config
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"


def make_client(key=None, secret=None, unsigned=False, pool=10, read_timeout=120):
    config = Config(
        region_name=REGION,
        signature_version=UNSIGNED if unsigned else "s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=read_timeout,
        retries={"max_attempts": 1, "mode": "standard"},
        max_pool_connections=pool,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=ENV.endpoint,
        aws_access_key_id=ENV.key if key is None else key,
        aws_secret_access_key=ENV.secret if secret is None else secret,
        config=config,
    )


_CLIENT = None


def s3():
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = make_client(pool=32)
    return _CLIENT


def bucket_name(tag):
    return f"s3t-{ENV.run}-{tag}"


def new_bucket(tag):
    name = bucket_name(tag)
    s3().create_bucket(Bucket=name)
    with _LOCK:
        BUCKETS.append(name)
    return name


def lenient(why):
    """True (and a note) when this run forgives a known deviation of the
    validation server; never under a real gateway."""
    if ENV.lenient:
        note(f"lenient ({ENV.lenient}): skipped a step: {why}")
        return True
    return False


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def eq(got, want, what):
    if got != want:
        g, w = repr(got), repr(want)
        if len(g) > 300:
            g = g[:300] + "..."
        if len(w) > 300:
            w = w[:300] + "..."
        raise CheckFailed(f"{what}: got {g}, want {w}")


def _short(v):
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def expect_error(status, code, fn, *args, **kwargs):
    """Calls a boto3 method that must fail with this HTTP status and one of
    these S3 error codes (None: any code; HEAD answers carry no code)."""
    what = f"{getattr(fn, '__name__', fn)}({', '.join(f'{k}={_short(v)}' for k, v in kwargs.items())})"
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got_status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        got_code = e.response.get("Error", {}).get("Code")
        codes = (code,) if isinstance(code, str) else code
        statuses = (status,) if isinstance(status, int) else status
        if got_status not in statuses or (codes is not None and got_code not in codes):
            raise CheckFailed(
                f"{what}: want {status} {code}, got {got_status} {got_code} "
                f"({e.response.get('Error', {}).get('Message')})"
            )
        return e
    raise CheckFailed(f"{what}: want {status} {code}, but it succeeded")


def head_status(bucket, key, client=None):
    try:
        (client or s3()).head_object(Bucket=bucket, Key=key)
        return 200
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def expect_absent(bucket, key, why):
    st = head_status(bucket, key)
    expect(st == 404, f"{why}: HEAD {key!r} answers {st}, want 404 (something partial is visible)")
    r = s3().list_objects_v2(Bucket=bucket, Prefix=key)
    keys = [o["Key"] for o in r.get("Contents", [])]
    expect(key not in keys, f"{why}: {key!r} is listed")


def all_keys(bucket, prefix=""):
    keys = []
    for page in s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def get_bytes(bucket, key, client=None, **kw):
    return (client or s3()).get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def multipart_etag(part_md5_digests):
    return '"%s-%d"' % (hashlib.md5(b"".join(part_md5_digests)).hexdigest(), len(part_md5_digests))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def write_random_file(path, size, part_size=8 * MiB):
    """Random bytes to path; returns (sha256 hex, md5 hex, md5 digests of
    each part_size piece)."""
    sha, md5, parts = hashlib.sha256(), hashlib.md5(), []
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(part_size, left))
            f.write(b)
            sha.update(b)
            md5.update(b)
            parts.append(hashlib.md5(b).digest())
            left -= len(b)
    return sha.hexdigest(), md5.hexdigest(), parts


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http(method, url, body=None, headers=None, timeout=60):
    """A plain HTTP request; returns (status, headers, body) whatever the status."""
    headers = dict(headers or {})
    if body is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def error_code(body):
    m = re.search(rb"<Code>([^<]*)</Code>", body or b"")
    return m.group(1).decode() if m else None


def expect_http(result, status, code, what):
    st, _, body = result
    statuses = (status,) if isinstance(status, int) else status
    if st not in statuses or (code is not None and error_code(body) != code):
        raise CheckFailed(f"{what}: want {status} {code}, got {st} {error_code(body)}: {body[:300]!r}")


def aws(*args, timeout=600, check=True):
    if not ENV.aws_cli:
        raise CheckFailed("no aws command line: set AWS_CLI")
    cmd = [ENV.aws_cli, *args, "--endpoint-url", ENV.endpoint]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{' '.join(args)}: no end within {timeout} s")
    if check and p.returncode != 0:
        raise CheckFailed(f"aws {' '.join(args)} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def parallel(fn, items, workers=16):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def delete_keys(bucket, keys):
    keys = list(keys)
    for i in range(0, len(keys), 1000):
        r = s3().delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
        )
        if r.get("Errors"):
            raise CheckFailed(f"delete_objects errors: {r['Errors'][:5]}")


# ---------------------------------------------------------------------------
# Checks

CHECKS = []


class Check:
    def __init__(self, name, fn, timeout, tessera_only, doc):
        self.name, self.fn, self.timeout, self.tessera_only, self.doc = name, fn, timeout, tessera_only, doc


def check(name, timeout=300, tessera_only=False):
    def wrap(fn):
        CHECKS.append(Check(name, fn, timeout, tessera_only, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return wrap


@check("bucket_lifecycle")
def check_bucket_lifecycle():
    """create, head, list, location, delete (non-empty refused), head after delete"""
    c = s3()
    b = new_bucket("life")
    c.head_bucket(Bucket=b)
    names = [x["Name"] for x in c.list_buckets()["Buckets"]]
    expect(b in names, f"{b} not in list_buckets: {names}")
    loc = c.get_bucket_location(Bucket=b).get("LocationConstraint")
    expect(loc in (None, "", REGION), f"get_bucket_location: {loc!r}")
    if not lenient("moto, like AWS in us-east-1, answers 200 to re-creating an owned bucket"):
        expect_error(409, "BucketAlreadyOwnedByYou", c.create_bucket, Bucket=b)

    c.put_object(Bucket=b, Key="deep/er/key", Body=b"x")
    expect_error(409, "BucketNotEmpty", c.delete_bucket, Bucket=b)
    c.head_bucket(Bucket=b)
    c.delete_object(Bucket=b, Key="deep/er/key")
    # the empty "directories" left behind must be gone
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("KeyCount"), 0, "KeyCount after the last key is deleted")
    eq(r.get("CommonPrefixes", []), [], "CommonPrefixes after the last key is deleted")
    c.delete_bucket(Bucket=b)
    expect_error(404, None, c.head_bucket, Bucket=b)
    expect_error(404, "NoSuchBucket", c.get_bucket_location, Bucket=b)
    expect_error(404, "NoSuchBucket", c.list_objects_v2, Bucket=b)
    expect_error(404, "NoSuchBucket", c.put_object, Bucket=b, Key="k", Body=b"x")
    expect_error(404, "NoSuchBucket", c.delete_bucket, Bucket=b)
    names = [x["Name"] for x in c.list_buckets()["Buckets"]]
    expect(b not in names, f"{b} still in list_buckets after delete")


BIG = 100 * MiB


@check("put_get", timeout=900)
def check_put_get():
    """0 B, 1 B and 100 MiB objects, up and down with awscli and boto3"""
    c = s3()
    b = new_bucket("putget")
    for size in (0, 1):
        data = os.urandom(size)
        r = c.put_object(Bucket=b, Key=f"size-{size}", Body=data)
        eq(r["ETag"], md5_etag(data), f"PUT {size} B ETag")
        g = c.get_object(Bucket=b, Key=f"size-{size}")
        eq(g["Body"].read(), data, f"GET {size} B body")
        eq(g["ContentLength"], size, f"GET {size} B Content-Length")
        eq(g["ETag"], md5_etag(data), f"GET {size} B ETag")
        h = c.head_object(Bucket=b, Key=f"size-{size}")
        eq(h["ContentLength"], size, f"HEAD {size} B Content-Length")
        eq(h["ETag"], md5_etag(data), f"HEAD {size} B ETag")
    # overwrite replaces
    c.put_object(Bucket=b, Key="size-1", Body=b"xy")
    eq(get_bytes(b, "size-1"), b"xy", "body after overwrite")
    expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="missing")
    expect_error(404, None, c.head_object, Bucket=b, Key="missing")
    expect_error(404, "NoSuchBucket", c.get_object, Bucket=bucket_name("nosuch"), Key="k")

    src = os.path.join(ENV.tmp, "big.bin")
    sha, md5hex, parts8 = write_random_file(src, BIG)
    # awscli up (multipart, 8 MiB parts), boto3 down (parallel ranged GETs)
    t = time.monotonic()
    aws("s3", "cp", src, f"s3://{b}/big/via-awscli.bin", "--only-show-errors")
    note(f"aws s3 cp up 100 MiB: {time.monotonic() - t:.1f} s")
    h = c.head_object(Bucket=b, Key="big/via-awscli.bin")
    eq(h["ContentLength"], BIG, "size of the awscli upload")
    eq(h["ETag"], multipart_etag(parts8), "ETag of the awscli multipart upload")
    dst = os.path.join(ENV.tmp, "big.down1")
    t = time.monotonic()
    with open(dst, "wb") as f:
        c.download_fileobj(b, "big/via-awscli.bin", f)
    note(f"boto3 download_fileobj 100 MiB: {time.monotonic() - t:.1f} s")
    eq(sha256_file(dst), sha, "sha256 of the boto3 download")
    os.unlink(dst)
    # boto3 single streamed PutObject up, awscli down
    t = time.monotonic()
    with open(src, "rb") as f:
        r = c.put_object(Bucket=b, Key="big/via-put.bin", Body=f)
    note(f"boto3 put_object 100 MiB: {time.monotonic() - t:.1f} s")
    eq(r["ETag"], '"%s"' % md5hex, "ETag of the single 100 MiB PUT")
    dst = os.path.join(ENV.tmp, "big.down2")
    t = time.monotonic()
    aws("s3", "cp", f"s3://{b}/big/via-put.bin", dst, "--only-show-errors")
    note(f"aws s3 cp down 100 MiB: {time.monotonic() - t:.1f} s")
    eq(sha256_file(dst), sha, "sha256 of the awscli download")
    os.unlink(dst)
    # and a plain streamed GetObject
    h = hashlib.sha256()
    g = c.get_object(Bucket=b, Key="big/via-put.bin")
    for chunk in g["Body"].iter_chunks(MiB):
        h.update(chunk)
    eq(h.hexdigest(), sha, "sha256 of a streamed GetObject")
    os.unlink(src)
    listed = {o["Key"]: o["Size"] for o in c.list_objects_v2(Bucket=b)["Contents"]}
    eq(
        listed,
        {"size-0": 0, "size-1": 2, "big/via-awscli.bin": BIG, "big/via-put.bin": BIG},
        "listing after the uploads",
    )


@check("ranges")
def check_ranges():
    """ranged GETs: first byte, middle, suffix, open end, past the end"""
    c = s3()
    b = new_bucket("ranges")
    n = MiB + 17
    data = os.urandom(n)
    c.put_object(Bucket=b, Key="r", Body=data)

    def rng(spec, want, first, last):
        g = c.get_object(Bucket=b, Key="r", Range=spec)
        eq(g["ResponseMetadata"]["HTTPStatusCode"], 206, f"status of Range {spec}")
        body = g["Body"].read()
        eq(len(body), len(want), f"length of Range {spec}")
        expect(body == want, f"bytes of Range {spec} differ")
        eq(g["ContentLength"], len(want), f"Content-Length of Range {spec}")
        eq(g.get("ContentRange"), f"bytes {first}-{last}/{n}", f"Content-Range of Range {spec}")

    rng("bytes=0-0", data[:1], 0, 0)
    rng("bytes=1000-1999", data[1000:2000], 1000, 1999)
    rng("bytes=-100", data[-100:], n - 100, n - 1)
    rng(f"bytes={n - 10}-", data[-10:], n - 10, n - 1)
    rng("bytes=524288-", data[524288:], 524288, n - 1)
    rng(f"bytes={n - 10}-{n + 100}", data[-10:], n - 10, n - 1)  # end past the end is cut
    rng(f"bytes=-{n + 100}", data, 0, n - 1)  # suffix longer than the object
    expect_error(416, "InvalidRange", c.get_object, Bucket=b, Key="r", Range=f"bytes={n}-")
    expect_error(416, "InvalidRange", c.get_object, Bucket=b, Key="r", Range=f"bytes={n + 5}-{n + 10}")
    # the whole object still reads
    eq(get_bytes(b, "r"), data, "whole object after ranged reads")


PART = 8 * MiB
MP_PARTS = 25  # 200 MiB


@check("multipart", timeout=900)
def check_multipart():
    """200 MiB in 8 MiB parts, one part uploaded twice; list parts and uploads; complete"""
    c = s3()
    b = new_bucket("mp")
    key = "big/multi.bin"
    parts = [os.urandom(PART) for _ in range(MP_PARTS)]
    sha = hashlib.sha256()
    for p in parts:
        sha.update(p)
    digests = [hashlib.md5(p).digest() for p in parts]
    c.put_object(Bucket=b, Key="other", Body=b"committed")

    up = c.create_multipart_upload(Bucket=b, Key=key, ContentType="application/x-tessera-test", Metadata={"mp": "yes"})
    uid = up["UploadId"]
    eq(up["Key"], key, "Key of CreateMultipartUpload")
    # part 5 first with other data: the second upload must win
    wrong = os.urandom(PART)
    r = c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=5, Body=wrong)
    eq(r["ETag"], md5_etag(wrong), "ETag of the first part 5")

    order = list(range(1, MP_PARTS + 1))
    random.shuffle(order)
    t = time.monotonic()

    def put(n):
        r = c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=n, Body=parts[n - 1])
        eq(r["ETag"], md5_etag(parts[n - 1]), f"ETag of part {n}")

    parallel(put, order, workers=4)
    note(f"25 parts of 8 MiB, 4 at a time, shuffled: {time.monotonic() - t:.1f} s")

    # nothing of an upload in progress is visible
    expect_absent(b, key, "upload in progress")
    eq(all_keys(b), ["other"], "keys while an upload is in progress")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("CommonPrefixes", []), [], "prefixes while an upload is in progress")

    listed = []
    marker = None
    for _ in range(10):
        kw = {"PartNumberMarker": marker} if marker else {}
        r = c.list_parts(Bucket=b, Key=key, UploadId=uid, MaxParts=10, **kw)
        listed += r.get("Parts", [])
        if not r.get("IsTruncated"):
            break
        marker = r["NextPartNumberMarker"]
    eq([p["PartNumber"] for p in listed], list(range(1, MP_PARTS + 1)), "list_parts part numbers")
    for p in listed:
        eq(p["ETag"], md5_etag(parts[p["PartNumber"] - 1]), f"list_parts ETag of part {p['PartNumber']}")
        eq(p["Size"], PART, f"list_parts Size of part {p['PartNumber']}")

    ups = c.list_multipart_uploads(Bucket=b).get("Uploads", [])
    expect(any(u["UploadId"] == uid and u["Key"] == key for u in ups), f"upload not in list_multipart_uploads: {ups}")
    ups = c.list_multipart_uploads(Bucket=b, Prefix="big/").get("Uploads", [])
    expect(any(u["UploadId"] == uid for u in ups), "upload not in list_multipart_uploads with Prefix")
    ups = c.list_multipart_uploads(Bucket=b, Prefix="nothing/").get("Uploads", [])
    eq(ups, [], "list_multipart_uploads with a prefix that matches nothing")

    done = c.complete_multipart_upload(
        Bucket=b,
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]},
    )
    want_etag = multipart_etag(digests)
    eq(done["ETag"], want_etag, "ETag of CompleteMultipartUpload")
    # a Complete retried after a lost response gets the same answer
    again = c.complete_multipart_upload(
        Bucket=b,
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]},
    )
    eq(again["ETag"], want_etag, "ETag of a retried CompleteMultipartUpload")
    h = c.head_object(Bucket=b, Key=key)
    eq(h["ContentLength"], PART * MP_PARTS, "size of the completed object")
    eq(h["ETag"], want_etag, "HEAD ETag of the completed object")
    eq(h.get("ContentType"), "application/x-tessera-test", "Content-Type given at CreateMultipartUpload")
    eq(h.get("Metadata"), {"mp": "yes"}, "metadata given at CreateMultipartUpload")
    got = hashlib.sha256()
    for chunk in c.get_object(Bucket=b, Key=key)["Body"].iter_chunks(MiB):
        got.update(chunk)
    eq(got.hexdigest(), sha.hexdigest(), "sha256 of the completed object")
    ups = c.list_multipart_uploads(Bucket=b).get("Uploads", [])
    expect(all(u["UploadId"] != uid for u in ups), "completed upload still in list_multipart_uploads")
    # GET and HEAD by part number, with the part count
    h = c.head_object(Bucket=b, Key=key, PartNumber=2)
    eq(h["ContentLength"], PART, "HEAD partNumber=2 Content-Length")
    eq(h.get("PartsCount"), MP_PARTS, "x-amz-mp-parts-count")
    g = c.get_object(Bucket=b, Key=key, PartNumber=MP_PARTS)
    eq(g["ResponseMetadata"]["HTTPStatusCode"], 206, "status of GET partNumber")
    eq(g.get("PartsCount"), MP_PARTS, "x-amz-mp-parts-count of GET partNumber")
    eq(g["ContentRange"], f"bytes {PART * (MP_PARTS - 1)}-{PART * MP_PARTS - 1}/{PART * MP_PARTS}", "Content-Range of the last part")
    expect(g["Body"].read() == parts[-1], "bytes of GET partNumber=last")
    expect_error(416, "InvalidPartNumber", c.get_object, Bucket=b, Key=key, PartNumber=MP_PARTS + 1)
    # an object of one PUT is one part
    g = c.get_object(Bucket=b, Key="other", PartNumber=1)
    eq(g["Body"].read(), b"committed", "GET partNumber=1 of a single-part object")
    expect("PartsCount" not in g, "a single-part object reports no part count")
    expect_error(416, "InvalidPartNumber", c.get_object, Bucket=b, Key="other", PartNumber=2)
    # a range across a part boundary
    g = c.get_object(Bucket=b, Key=key, Range=f"bytes={PART - 5}-{PART + 4}")
    eq(g["Body"].read(), parts[0][-5:] + parts[1][:5], "range across parts 1 and 2")
    eq(sorted(all_keys(b)), sorted(["other", key]), "keys after completion")
    # once the key holds another object, the upload is simply gone
    c.put_object(Bucket=b, Key=key, Body=b"replaced")
    expect_error(
        404,
        "NoSuchUpload",
        c.complete_multipart_upload,
        Bucket=b,
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": listed[0]["ETag"]}]},
    )


@check("object_versions")
def check_object_versions():
    """ListObjectVersions on an unversioned bucket: every key once, version null, pages of 1 by both markers"""
    c = s3()
    b = new_bucket("ver")
    keys = ["a", "b/c", "b/d", "e"]
    for k in keys:
        c.put_object(Bucket=b, Key=k, Body=k.encode())
    r = c.list_object_versions(Bucket=b)
    eq([v["Key"] for v in r.get("Versions", [])], keys, "keys of list_object_versions")
    for v in r["Versions"]:
        eq(v["VersionId"], "null", f"VersionId of {v['Key']}")
        eq(v["IsLatest"], True, f"IsLatest of {v['Key']}")
        eq(v["ETag"], md5_etag(v["Key"].encode()), f"ETag of {v['Key']}")
        eq(v["Size"], len(v["Key"]), f"Size of {v['Key']}")
    eq(r.get("DeleteMarkers", []), [], "delete markers of an unversioned bucket")
    seen = []
    kw = {}
    for _ in range(10):
        r = c.list_object_versions(Bucket=b, MaxKeys=1, **kw)
        seen += [v["Key"] for v in r.get("Versions", [])]
        if not r.get("IsTruncated"):
            break
        eq(r["NextVersionIdMarker"], "null", "NextVersionIdMarker")
        kw = {"KeyMarker": r["NextKeyMarker"], "VersionIdMarker": r["NextVersionIdMarker"]}
    eq(seen, keys, "keys over pages of 1")
    r = c.list_object_versions(Bucket=b, Delimiter="/")
    eq([p["Prefix"] for p in r.get("CommonPrefixes", [])], ["b/"], "prefixes of list_object_versions")
    out = json.loads(aws("s3api", "list-object-versions", "--bucket", b, "--prefix", "b/").stdout)
    eq([v["Key"] for v in out.get("Versions", [])], ["b/c", "b/d"], "awscli list-object-versions")
    expect_error(400, "InvalidArgument", c.list_object_versions, Bucket=b, KeyMarker="a", VersionIdMarker="3HL4kqtJlcpXroDTDmJ")


@check("request_ids")
def check_request_ids():
    """every answer names its request; error bodies carry RequestId and HostId; a 304 carries the ETag"""
    c = s3()
    b = new_bucket("rid")
    put = c.put_object(Bucket=b, Key="k", Body=b"hello")
    expect(put["ResponseMetadata"].get("RequestId"), "no request id on a PutObject answer")
    e = expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="missing")
    rid = e.response["ResponseMetadata"].get("RequestId")
    expect(rid and re.fullmatch(r"[0-9A-F]{16}", rid), f"request id of a NoSuchKey: {rid!r}")
    # errors s3s raises itself (an unsigned request) carry them in the body too
    st, headers, body = http("GET", f"{ENV.endpoint}/{b}/k")
    expect_http((st, headers, body), 403, "AccessDenied", "anonymous GET")
    m = re.search(rb"<RequestId>([^<]+)</RequestId>", body)
    expect(m and m.group(1).decode() == headers.get("x-amz-request-id"), f"RequestId in the body and header: {body!r}")
    expect(b"<HostId>" in body, f"HostId in an error body: {body!r}")
    # 304 with its validators
    etag = put["ETag"]
    e = expect_error(304, None, c.get_object, Bucket=b, Key="k", IfNoneMatch=etag)
    eq(e.response["ResponseMetadata"]["HTTPHeaders"].get("etag"), etag, "ETag of a 304")
    expect(e.response["ResponseMetadata"]["HTTPHeaders"].get("last-modified"), "Last-Modified of a 304")


@check("upload_part_copy")
def check_upload_part_copy():
    """UploadPartCopy of whole objects and byte ranges from three sources, conditions and bad ranges refused"""
    c = s3()
    b = new_bucket("partcopy")
    src = {"a": os.urandom(6 * MiB), "b": os.urandom(6 * MiB + 5), "c": os.urandom(3000)}
    for k, v in src.items():
        c.put_object(Bucket=b, Key=f"src/{k}", Body=v)
    up = c.create_multipart_upload(Bucket=b, Key="joined")
    uid = up["UploadId"]
    plan = [
        (1, "a", None, src["a"]),
        (2, "b", f"bytes={MiB}-{6 * MiB + 4}", src["b"][MiB:]),
        (3, "c", "bytes=10-1000", src["c"][10:1001]),
    ]
    parts = []
    for number, k, rng, want in plan:
        kw = {"CopySourceRange": rng} if rng else {}
        r = c.upload_part_copy(
            Bucket=b, Key="joined", UploadId=uid, PartNumber=number, CopySource={"Bucket": b, "Key": f"src/{k}"}, **kw
        )
        eq(r["CopyPartResult"]["ETag"], md5_etag(want), f"ETag of copied part {number}")
        parts.append({"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]})
    expect_error(
        400,
        "InvalidArgument",
        c.upload_part_copy,
        Bucket=b,
        Key="joined",
        UploadId=uid,
        PartNumber=4,
        CopySource={"Bucket": b, "Key": "src/c"},
        CopySourceRange="bytes=0-3000",
    )
    expect_error(
        412,
        "PreconditionFailed",
        c.upload_part_copy,
        Bucket=b,
        Key="joined",
        UploadId=uid,
        PartNumber=4,
        CopySource={"Bucket": b, "Key": "src/c"},
        CopySourceIfMatch='"0123456789abcdef0123456789abcdef"',
    )
    expect_error(
        404,
        "NoSuchKey",
        c.upload_part_copy,
        Bucket=b,
        Key="joined",
        UploadId=uid,
        PartNumber=4,
        CopySource={"Bucket": b, "Key": "src/missing"},
    )
    listed = c.list_parts(Bucket=b, Key="joined", UploadId=uid)["Parts"]
    eq([p["PartNumber"] for p in listed], [1, 2, 3], "parts after the copies (the refused ones left nothing)")
    c.complete_multipart_upload(Bucket=b, Key="joined", UploadId=uid, MultipartUpload={"Parts": parts})
    want = b"".join(w for _, _, _, w in plan)
    expect(get_bytes(b, "joined") == want, "bytes of an object assembled by UploadPartCopy")


@check("multipart_abort")
def check_multipart_abort():
    """abort: gone from the list, NoSuchUpload afterwards, nothing visible"""
    c = s3()
    b = new_bucket("mpabort")
    key = "dir/aborted.bin"
    uid = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
    c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=1, Body=os.urandom(5 * MiB))
    c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=2, Body=b"tail")
    c.abort_multipart_upload(Bucket=b, Key=key, UploadId=uid)
    ups = c.list_multipart_uploads(Bucket=b).get("Uploads", [])
    expect(all(u["UploadId"] != uid for u in ups), f"aborted upload still listed: {ups}")
    expect_error(404, "NoSuchUpload", c.list_parts, Bucket=b, Key=key, UploadId=uid)
    if not lenient("moto answers 500 to UploadPart after abort"):
        expect_error(404, "NoSuchUpload", c.upload_part, Bucket=b, Key=key, UploadId=uid, PartNumber=3, Body=b"x")
    if not lenient("moto answers 500 to CompleteMultipartUpload after abort"):
        expect_error(
            404,
            "NoSuchUpload",
            c.complete_multipart_upload,
            Bucket=b,
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]},
        )
    expect_absent(b, key, "after abort")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("KeyCount"), 0, "keys after abort")
    eq(r.get("CommonPrefixes", []), [], "prefixes after abort")


def _put_has_if_none_match(client):
    return "IfNoneMatch" in client.meta.service_model.operation_model("PutObject").input_shape.members


def put_if_none_match(client, **kw):
    """PutObject with If-None-Match: * (the parameter if this botocore has
    it, else the header added before signing)."""
    if _put_has_if_none_match(client):
        return client.put_object(IfNoneMatch="*", **kw)

    def add(request, **_):
        request.headers["If-None-Match"] = "*"

    client.meta.events.register("before-sign.s3.PutObject", add)
    try:
        return client.put_object(**kw)
    finally:
        client.meta.events.unregister("before-sign.s3.PutObject", add)


@check("conditional")
def check_conditional():
    """If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since on GET/HEAD; If-None-Match: * on PUT"""
    c = s3()
    b = new_bucket("cond")
    data = os.urandom(1000)
    c.put_object(Bucket=b, Key="k", Body=data)
    h = c.head_object(Bucket=b, Key="k")
    etag, lm = h["ETag"], h["LastModified"]
    day = datetime.timedelta(days=1)
    for op in (c.get_object, c.head_object):
        name = op.__name__

        def ok(**kw):
            r = op(Bucket=b, Key="k", **kw)
            eq(r["ResponseMetadata"]["HTTPStatusCode"], 200, f"{name} {kw}")
            if name == "get_object":
                eq(r["Body"].read(), data, f"{name} {kw} body")

        code412 = "PreconditionFailed" if name == "get_object" else None
        ok(IfMatch=etag)
        expect_error(412, code412, op, Bucket=b, Key="k", IfMatch='"0123456789abcdef0123456789abcdef"')
        expect_error(304, None, op, Bucket=b, Key="k", IfNoneMatch=etag)
        ok(IfNoneMatch='"0123456789abcdef0123456789abcdef"')
        ok(IfModifiedSince=lm - day)
        expect_error(304, None, op, Bucket=b, Key="k", IfModifiedSince=lm)
        ok(IfUnmodifiedSince=lm)
        ok(IfUnmodifiedSince=lm + day)
        expect_error(412, code412, op, Bucket=b, Key="k", IfUnmodifiedSince=lm - day)
        # AWS's documented pairs: If-Match true wins over If-Unmodified-Since
        # false; If-None-Match false wins over If-Modified-Since true.
        if not lenient("moto answers 412 for If-Match true with If-Unmodified-Since false"):
            ok(IfMatch=etag, IfUnmodifiedSince=lm - day)
        expect_error(304, None, op, Bucket=b, Key="k", IfNoneMatch=etag, IfModifiedSince=lm - day)
    # PUT If-None-Match: *
    expect_error(412, "PreconditionFailed", put_if_none_match, c, Bucket=b, Key="k", Body=b"other")
    eq(get_bytes(b, "k"), data, "object after a refused If-None-Match PUT")
    put_if_none_match(c, Bucket=b, Key="fresh", Body=b"new")
    eq(get_bytes(b, "fresh"), b"new", "object written with If-None-Match: *")


# -- listing -----------------------------------------------------------------

LIST_EXTRAS = [
    "a",
    "d1-x",
    "d1.txt",
    "d10/s0/k0",
    "d10/z",
    "e",
    "Z-upper",
    "z~",
    "d1/s1/k1~",
    "d1/s1/k1.0",
    "sp ace/k+plus",
    "sp ace/100%",
    "sp ace/q?x=1&y",
    "uni/ключ",
    "uni/\U0001f600",
    "uni/\uff5e",
    "x/a&b<c>\"'",
]


@check("virtual_hosted", tessera_only=True)
def check_virtual_hosted():
    """virtual-hosted-style addressing under the gateway's domain, beside path style"""
    domain = os.environ.get("S3_VIRTUAL_DOMAIN")
    if not domain:
        raise Skip("S3_VIRTUAL_DOMAIN is not set (the gateway's `domain`)")
    import socket

    # Names under the domain resolve to the gateway here, as a wildcard
    # DNS record would make them.
    port = urllib.parse.urlparse(ENV.endpoint).port
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and (host == domain or host.endswith("." + domain)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        v = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://{domain}:{port}",
            aws_access_key_id=ENV.key,
            aws_secret_access_key=ENV.secret,
            config=Config(region_name=REGION, s3={"addressing_style": "virtual"},
                          retries={"max_attempts": 1, "mode": "standard"}),
        )
        b = bucket_name("vhost")
        v.create_bucket(Bucket=b)
        with _LOCK:
            BUCKETS.append(b)
        v.put_object(Bucket=b, Key="dir/file.txt", Body=b"virtual")
        eq(v.get_object(Bucket=b, Key="dir/file.txt")["Body"].read(), b"virtual", "GET, virtual-hosted")
        eq([o["Key"] for o in v.list_objects_v2(Bucket=b)["Contents"]], ["dir/file.txt"], "listing, virtual-hosted")
        eq(get_bytes(b, "dir/file.txt"), b"virtual", "the same object, path style")
        url = v.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "dir/file.txt"}, ExpiresIn=60)
        expect(urllib.parse.urlparse(url).hostname == f"{b}.{domain}", f"a virtual-hosted URL: {url}")
        st, _, body = http("GET", url)
        eq((st, body), (200, b"virtual"), "a presigned virtual-hosted GET")
        v.delete_object(Bucket=b, Key="dir/file.txt")
    finally:
        socket.getaddrinfo = real


@check("conditional_writes")
def check_conditional_writes():
    """If-Match and If-None-Match: * on PutObject and CompleteMultipartUpload, as S3 has them since 2024"""
    c = s3()
    b = new_bucket("cond-writes")
    e1 = c.put_object(Bucket=b, Key="k", Body=b"one")["ETag"]
    e2 = c.put_object(Bucket=b, Key="k", Body=b"two" * 10_000, IfMatch=e1)["ETag"]
    eq(get_bytes(b, "k"), b"two" * 10_000, "a PUT whose If-Match held")
    expect_error(412, "PreconditionFailed", c.put_object, Bucket=b, Key="k", Body=b"three", IfMatch=e1)
    eq(get_bytes(b, "k"), b"two" * 10_000, "after a stale If-Match")
    expect_error(404, "NoSuchKey", c.put_object, Bucket=b, Key="absent", Body=b"x", IfMatch=e2)
    expect_error(412, "PreconditionFailed", c.put_object, Bucket=b, Key="k", Body=b"x", IfNoneMatch="*")

    def upload(key):
        up = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
        etag = c.upload_part(Bucket=b, Key=key, UploadId=up, PartNumber=1, Body=b"p" * 1000)["ETag"]
        return up, {"Parts": [{"PartNumber": 1, "ETag": etag}]}

    up, parts = upload("k")
    expect_error(412, "PreconditionFailed", c.complete_multipart_upload, Bucket=b, Key="k", UploadId=up,
                 MultipartUpload=parts, IfNoneMatch="*")
    eq(len(c.list_parts(Bucket=b, Key="k", UploadId=up)["Parts"]), 1, "a refused completion leaves the upload")
    expect_error(412, "PreconditionFailed", c.complete_multipart_upload, Bucket=b, Key="k", UploadId=up,
                 MultipartUpload=parts, IfMatch=e1)
    c.complete_multipart_upload(Bucket=b, Key="k", UploadId=up, MultipartUpload=parts, IfMatch=e2)
    eq(get_bytes(b, "k"), b"p" * 1000, "a completion whose If-Match held")
    up, parts = upload("fresh")
    c.complete_multipart_upload(Bucket=b, Key="fresh", UploadId=up, MultipartUpload=parts, IfNoneMatch="*")
    eq(get_bytes(b, "fresh"), b"p" * 1000, "a completion with If-None-Match: * of a new key")


def list_model(keys, prefix, delimiter, start_after):
    """The entries S3 lists, in order: ('k', key) or ('p', common prefix).

    The start-after key (or marker) is compared with what each key lists
    as: a key rolled into a common prefix at or before it is not listed, so
    a marker that is itself a common prefix (v1's NextMarker) resumes after
    that prefix instead of repeating it.
    """
    out, seen = [], set()
    sa = (start_after or "").encode()
    for k in sorted(keys, key=lambda k: k.encode()):
        if not k.startswith(prefix):
            continue
        item = ("k", k)
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                item = ("p", k[: i + len(delimiter)])
        if start_after and item[1].encode() <= sa:
            continue
        if item[0] == "p":
            if item[1] in seen:
                continue
            seen.add(item[1])
        out.append(item)
    return out


def _page_entries(r, what, max_keys, decode):
    contents = r.get("Contents", [])
    cps = r.get("CommonPrefixes", [])
    keys = [decode(o["Key"]) for o in contents]
    prefixes = [decode(p["Prefix"]) for p in cps]
    expect(keys == sorted(keys, key=str.encode), f"{what}: Contents not in byte order: {keys[:10]}")
    expect(prefixes == sorted(prefixes, key=str.encode), f"{what}: CommonPrefixes not in byte order: {prefixes[:10]}")
    n = len(keys) + len(prefixes)
    expect(n <= (max_keys or 1000), f"{what}: {n} entries on a page of MaxKeys {max_keys}")
    entries = sorted([("k", k) for k in keys] + [("p", p) for p in prefixes], key=lambda e: e[1].encode())
    return entries, contents


def list_v2(client, bucket, prefix, delimiter, start_after, max_keys, encoding=None):
    entries, token, pages = [], None, 0
    decode = urllib.parse.unquote_plus if encoding == "explicit" else (lambda x: x)
    what = f"ListObjectsV2 prefix={prefix!r} delimiter={delimiter!r} start-after={start_after!r} max-keys={max_keys}"
    while True:
        kw = {"Bucket": bucket}
        if prefix:
            kw["Prefix"] = prefix
        if delimiter:
            kw["Delimiter"] = delimiter
        if start_after:
            kw["StartAfter"] = start_after
        if max_keys:
            kw["MaxKeys"] = max_keys
        if token:
            kw["ContinuationToken"] = token
        if encoding == "explicit":
            kw["EncodingType"] = "url"
        r = client.list_objects_v2(**kw)
        pages += 1
        expect(pages < 5000, f"{what}: more than 5000 pages")
        if encoding == "explicit":
            eq(r.get("EncodingType"), "url", f"{what}: EncodingType in the answer")
        page, contents = _page_entries(r, f"{what} page {pages}", max_keys, decode)
        eq(r.get("KeyCount"), len(page), f"{what} page {pages}: KeyCount")
        eq(decode(r.get("Prefix", "")), prefix, f"{what}: Prefix echoed")
        if delimiter:
            eq(decode(r.get("Delimiter", "")), delimiter, f"{what}: Delimiter echoed")
        if entries and page:
            expect(
                page[0][1].encode() > entries[-1][1].encode(),
                f"{what}: page {pages} starts at {page[0][1]!r}, not after {entries[-1][1]!r}",
            )
        entries += page
        for o in contents:
            k = decode(o["Key"])
            eq(o["Size"], len(k.encode()), f"{what}: Size of {k!r}")
            eq(o["ETag"], md5_etag(k.encode()), f"{what}: ETag of {k!r}")
        if not r.get("IsTruncated"):
            break
        expect(page, f"{what}: an empty page that says it is truncated")
        token = r.get("NextContinuationToken")
        expect(token, f"{what}: truncated without NextContinuationToken")
    return entries, pages


def list_v1(client, bucket, prefix, delimiter, marker, max_keys, encoding=None):
    entries, pages = [], 0
    decode = urllib.parse.unquote_plus if encoding == "explicit" else (lambda x: x)
    what = f"ListObjects prefix={prefix!r} delimiter={delimiter!r} marker={marker!r} max-keys={max_keys}"
    while True:
        kw = {"Bucket": bucket}
        if prefix:
            kw["Prefix"] = prefix
        if delimiter:
            kw["Delimiter"] = delimiter
        if marker:
            kw["Marker"] = marker
        if max_keys:
            kw["MaxKeys"] = max_keys
        if encoding == "explicit":
            kw["EncodingType"] = "url"
        r = client.list_objects(**kw)
        pages += 1
        expect(pages < 5000, f"{what}: more than 5000 pages")
        page, _ = _page_entries(r, f"{what} page {pages}", max_keys, decode)
        # botocore decodes v1's Marker and NextMarker but not its Prefix
        echoed = r.get("Prefix", "")
        expect(prefix in (echoed, urllib.parse.unquote_plus(echoed)), f"{what}: Prefix echoed as {echoed!r}")
        if entries and page:
            expect(
                page[0][1].encode() > entries[-1][1].encode(),
                f"{what}: page {pages} starts at {page[0][1]!r}, not after {entries[-1][1]!r}",
            )
        entries += page
        if not r.get("IsTruncated"):
            break
        expect(page, f"{what}: an empty page that says it is truncated")
        nm = r.get("NextMarker")
        if delimiter:
            expect(nm, f"{what}: truncated with a delimiter but no NextMarker")
            nm = decode(nm)
        else:
            nm = decode(nm) if nm else max(page, key=lambda e: e[1].encode())[1]
        marker = nm
    return entries, pages


def _diff(got, want):
    gs, ws = set(got), set(want)
    return f"{len(got)} entries, want {len(want)}; missing {sorted(ws - gs)[:5]}, extra {sorted(gs - ws)[:5]}"


@check("listing", timeout=900)
def check_listing():
    """2,000+ keys: ListObjectsV2 and v1 with prefix, delimiter, start-after, pagination, url encoding"""
    c = s3()
    b = new_bucket("list")
    keys = [f"d{d}/s{s}/k{k}" for d in range(10) for s in range(20) for k in range(10)] + LIST_EXTRAS
    t = time.monotonic()
    parallel(lambda k: c.put_object(Bucket=b, Key=k, Body=k.encode()), keys, workers=16)
    note(f"{len(keys)} PUTs, 16 at a time: {time.monotonic() - t:.1f} s")

    combos = [
        ("", None, None, (7, 100, 1000, None)),
        ("", "/", None, (7, 100, 1000)),
        ("d1", "/", None, (7,)),
        ("d1/", "/", None, (7, 1000)),
        ("d1/s5/", "/", "d1/s5/k3", (2, 1000)),
        ("", None, "d5/s10/k5", (100,)),
        ("d2/", "s1", None, (7, 1000)),
        ("", "k", None, (100,)),
        ("", "/", "d5", (7,)),
        ("zzz", "/", None, (7,)),
        ("d1.txt", None, None, (7,)),
        ("sp ace/", "/", None, (1, 7)),
        ("uni/", None, None, (2,)),
        ("x/", "/", None, (1000,)),
    ]
    plain = make_client()  # without botocore's automatic encoding-type=url
    for ev in ("ListObjects", "ListObjectsV2"):
        plain.meta.events.unregister(
            f"before-parameter-build.s3.{ev}", botocore.handlers.set_list_objects_encoding_type_url
        )
    total_pages = 0

    def run(model_keys, combos, encodings=(None,)):
        nonlocal total_pages
        for prefix, delim, start, sizes in combos:
            want = list_model(model_keys, prefix, delim, start)
            for mk in sizes:
                for enc in encodings:
                    client = plain if enc in ("plain", "explicit") else c
                    for fn, name in ((list_v2, "v2"), (list_v1, "v1")):
                        if name == "v1" and delim and ENV.lenient == "moto":
                            continue  # moto's v1 neither counts prefixes in max-keys nor applies the marker to them
                        got, pages = fn(client, b, prefix, delim, start, mk, encoding=enc)
                        total_pages += pages
                        if got != want:
                            raise CheckFailed(
                                f"list {name} prefix={prefix!r} delimiter={delim!r} start={start!r} "
                                f"max-keys={mk} encoding={enc}: {_diff(got, want)}"
                            )
                        if mk:
                            expect(
                                pages >= -(-len(want) // mk),
                                f"list {name}: {pages} pages for {len(want)} entries of max-keys {mk}",
                            )

    t = time.monotonic()
    if lenient("ListObjects v1 with a delimiter is not compared (moto's is wrong)"):
        pass
    run(keys, combos)
    # what the other clients see: no encoding-type at all, and encoding-type=url decoded here
    run(keys, [("", None, None, (1000,)), ("", "/", None, (7,)), ("sp ace/", None, None, (1,))], ("plain", "explicit"))
    # default page size is at most 1000, and so is any larger MaxKeys
    for mk in (None, 5000):
        if mk and lenient("moto does not cap MaxKeys at 1000"):
            continue
        kw = {"MaxKeys": mk} if mk else {}
        r = c.list_objects_v2(Bucket=b, **kw)
        expect(
            r["KeyCount"] <= 1000 and r["IsTruncated"],
            f"MaxKeys={mk}: {r['KeyCount']} keys, truncated {r['IsTruncated']}",
        )
    note(f"{total_pages} list pages: {time.monotonic() - t:.1f} s")

    # deleting the last keys under a prefix removes the prefix
    gone = [k for k in keys if k.startswith("d3/s4/")]
    delete_keys(b, gone)
    keys = [k for k in keys if k not in gone]
    got, _ = list_v2(c, b, "d3/", "/", None, 1000)
    expect(("p", "d3/s4/") not in got, "d3/s4/ still listed after its last key was deleted")
    gone = [k for k in keys if k.startswith("d9/")]
    delete_keys(b, gone)
    keys = [k for k in keys if k not in gone]
    run(keys, [("", "/", None, (7, 1000)), ("d3/", "/", None, (1000,)), ("", None, "d8/s19/k5", (100,))])


@check("listing_order", timeout=600)
def check_listing_order():
    """keys whose names sort around '/' (d, d-1, d.txt, d/x, d0): every page boundary, every resume point"""
    c = s3()
    b = new_bucket("order")
    rng = random.Random(7)
    alphabet = ["a", "-", ".", "0", " ", "~"]
    keys = set()
    while len(keys) < 300:
        depth = rng.choice((1, 1, 2, 2, 3))
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(depth)]
        if any(p in (".", "..") for p in parts):
            continue
        key = "/".join(parts)
        # a key cannot also be a prefix of another key (keys are paths)
        if any(k.startswith(key + "/") or key.startswith(k + "/") for k in keys):
            continue
        keys.add(key)
    keys = sorted(keys)
    parallel(lambda k: c.put_object(Bucket=b, Key=k, Body=k.encode()), keys, workers=16)
    pages = 0
    starts = [None] + rng.sample(keys, 8) + [k.rsplit("/", 1)[0] + "/" for k in rng.sample(keys, 4) if "/" in k]
    prefixes = ["", "a", "a-", "a/", "-", "0", "a.", "~"]
    for prefix in prefixes:
        for delim in (None, "/", "-"):
            for start in starts[:4] if prefix else starts:
                want = list_model(keys, prefix, delim, start)
                for mk in (1, 7) if start is None else (7,):
                    for fn, name in ((list_v2, "v2"), (list_v1, "v1")):
                        got, n = fn(c, b, prefix, delim, start, mk)
                        pages += n
                        if got != want:
                            raise CheckFailed(
                                f"list {name} prefix={prefix!r} delimiter={delim!r} start={start!r} "
                                f"max-keys={mk}: {_diff(got, want)}"
                            )
    note(f"{len(keys)} keys, {pages} list pages")


def chunked_put(bucket, key, chunks, tamper=None, no_length=False):
    """A PUT with a streaming `aws-chunked` body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD),
    every chunk signed in a chain from the seed signature, as the AWS SDKs
    send it. `tamper=i` flips a byte of chunk i after signing it;
    `no_length` sends it with Transfer-Encoding: chunked and no
    Content-Length. Returns (status, body)."""
    import hmac

    host = urllib.parse.urlparse(ENV.endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{date}/{REGION}/s3/aws4_request"
    streaming = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    frames = chunks + [b""]

    def frame(data, sig):
        return f"{len(data):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n"

    path = "/" + bucket + "/" + urllib.parse.quote(key, safe="/~")
    headers = {
        "host": host,
        "x-amz-date": amz_date,
        "x-amz-content-sha256": streaming,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(sum(map(len, chunks))),
        "content-length": str(sum(len(frame(c, "0" * 64)) for c in frames)),
    }
    if no_length:
        del headers["content-length"]
    names = sorted(headers)
    canonical = "\n".join(
        ["PUT", path, "", "".join(f"{h}:{headers[h]}\n" for h in names), ";".join(names), streaming]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])

    def mac(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()

    signing_key = mac(mac(mac(mac(("AWS4" + ENV.secret).encode(), date), REGION), "s3"), "aws4_request")
    prev = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={ENV.key}/{scope}, SignedHeaders={';'.join(names)}, Signature={prev}"
    empty = hashlib.sha256(b"").hexdigest()
    body = b""
    for i, data in enumerate(frames):
        chunk_to_sign = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty, hashlib.sha256(data).hexdigest()]
        )
        prev = hmac.new(signing_key, chunk_to_sign.encode(), hashlib.sha256).hexdigest()
        if tamper == i:
            data = bytes([data[0] ^ 1]) + data[1:]
        body += frame(data, prev)
    send = {k: v for k, v in headers.items() if k != "host"}
    send["Authorization"] = auth
    return _send_put(host, path, send, [body[i : i + 50_000] for i in range(0, len(body), 50_000)] if no_length else body)


def _send_put(host, path, headers, body):
    """Sends a PUT; a list body goes with Transfer-Encoding: chunked."""
    conn = http_client.HTTPConnection(host, timeout=60)
    try:
        try:
            if isinstance(body, list):
                conn.request("PUT", path, body=iter(body), headers=headers, encode_chunked=True)
            else:
                conn.request("PUT", path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before taking the whole body
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def unsigned_chunked_put(bucket, key, pieces):
    """A header-signed PUT with x-amz-content-sha256: UNSIGNED-PAYLOAD and its
    body in HTTP chunks without Content-Length, as a client streaming from a
    pipe sends it. Returns (status, body)."""
    import hmac

    host = urllib.parse.urlparse(ENV.endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{date}/{REGION}/s3/aws4_request"
    path = "/" + bucket + "/" + urllib.parse.quote(key, safe="/~")
    headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    names = sorted(headers)
    canonical = "\n".join(
        ["PUT", path, "", "".join(f"{h}:{headers[h]}\n" for h in names), ";".join(names), "UNSIGNED-PAYLOAD"]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])

    def mac(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()

    signing_key = mac(mac(mac(mac(("AWS4" + ENV.secret).encode(), date), REGION), "s3"), "aws4_request")
    sig = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    send = {k: v for k, v in headers.items() if k != "host"}
    send["Authorization"] = f"AWS4-HMAC-SHA256 Credential={ENV.key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    return _send_put(host, path, send, pieces)


@check("aws_chunked")
def check_aws_chunked():
    """streaming aws-chunked uploads with chained chunk signatures: accepted, and refused when a chunk is altered"""
    c = s3()
    b = new_bucket("chunked")
    chunks = [os.urandom(64 * 1024), os.urandom(64 * 1024), os.urandom(10_000)]
    data = b"".join(chunks)
    st, body = chunked_put(b, "dir/signed.bin", chunks)
    expect(st == 200, f"aws-chunked PUT: {st} {body[:300]!r}")
    eq(get_bytes(b, "dir/signed.bin"), data, "aws-chunked object read back")
    head = c.head_object(Bucket=b, Key="dir/signed.bin")
    eq(head["ETag"].strip('"'), hashlib.md5(data).hexdigest(), "ETag of the aws-chunked object")
    eq(head.get("ContentEncoding"), None, "aws-chunked is framing, not a stored Content-Encoding")
    for i in (0, 2):
        st, body = chunked_put(b, f"dir/tampered-{i}.bin", chunks, tamper=i)
        expect(st == 403 and error_code(body) == "SignatureDoesNotMatch", f"chunk {i} altered: {st} {body[:300]!r}")
        expect_error(404, None, c.head_object, Bucket=b, Key=f"dir/tampered-{i}.bin")
    eq(all_keys(b), ["dir/signed.bin"], "keys after the altered uploads")


def form_post(url, fields, data, filename="upload.bin"):
    """A browser's form upload: multipart/form-data with the policy's fields
    then the file. Returns (status, headers, body)."""
    boundary = "----tessera" + os.urandom(8).hex()
    parts = []
    for name, value in fields.items():
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
        )
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return http("POST", url, b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@check("post_policy")
def check_post_policy():
    """browser POST uploads with a signed policy: accepted within it, refused outside it or when tampered"""
    c = s3()
    b = new_bucket("post")
    data = os.urandom(3000)
    post = c.generate_presigned_post(
        b, "uploads/photo.png",
        Fields={"Content-Type": "image/png", "x-amz-meta-from": "browser"},
        Conditions=[["starts-with", "$key", "uploads/"], ["content-length-range", 1, 10_000],
                    {"Content-Type": "image/png"}, {"x-amz-meta-from": "browser"}],
        ExpiresIn=300,
    )
    st, _, body = form_post(post["url"], post["fields"], data, filename="photo.png")
    expect(st in (200, 201, 204), f"POST upload: {st} {body[:300]!r}")
    eq(get_bytes(b, "uploads/photo.png"), data, "the POSTed object")
    h = c.head_object(Bucket=b, Key="uploads/photo.png")
    eq((h["ContentType"], h["Metadata"].get("from")), ("image/png", "browser"), "the POSTed object's metadata")
    # Outside the policy: too large, another key prefix, a tampered policy.
    st, _, body = form_post(post["url"], post["fields"], os.urandom(20_000), filename="big.png")
    expect(st in (400, 403), f"over the policy's content-length-range: {st} {body[:200]!r}")
    fields = dict(post["fields"], key="elsewhere/x.png")
    st, _, body = form_post(post["url"], fields, data)
    expect(st in (400, 403), f"a key outside the policy: {st} {body[:200]!r}")
    # S3's ${filename} is not substituted here: refused, not stored as is.
    named = c.generate_presigned_post(b, "uploads/${filename}", Conditions=[["starts-with", "$key", "uploads/"]])
    st, _, body = form_post(named["url"], named["fields"], data, filename="x.png")
    expect(st == 501, f"a ${{filename}} key: {st} {body[:200]!r}")
    fields = dict(post["fields"])
    sig = "x-amz-signature" if "x-amz-signature" in fields else "signature"
    fields[sig] = fields[sig][:-1] + ("0" if fields[sig][-1] != "0" else "1")
    st, _, body = form_post(post["url"], fields, data, filename="tampered.png")
    expect(st == 403, f"a tampered signature: {st} {body[:200]!r}")
    eq(all_keys(b), ["uploads/photo.png"], "keys after the refused uploads")


@check("chunked_no_length")
def check_chunked_no_length():
    """Transfer-Encoding: chunked without Content-Length: aws-chunked, unsigned and presigned bodies"""
    c = s3()
    b = new_bucket("te-chunked")
    chunks = [os.urandom(100_000), os.urandom(100_000), os.urandom(7)]
    data = b"".join(chunks)
    st, body = chunked_put(b, "aws-chunked.bin", chunks, no_length=True)
    expect(st == 200, f"aws-chunked PUT without Content-Length: {st} {body[:300]!r}")
    eq(get_bytes(b, "aws-chunked.bin"), data, "aws-chunked without Content-Length read back")
    st, body = unsigned_chunked_put(b, "unsigned.bin", [data[:70_000], data[70_000:]])
    expect(st == 200, f"UNSIGNED-PAYLOAD PUT without Content-Length: {st} {body[:300]!r}")
    eq(get_bytes(b, "unsigned.bin"), data, "unsigned chunked upload read back")
    eq(c.head_object(Bucket=b, Key="unsigned.bin")["ETag"], md5_etag(data), "its ETag")
    url = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "presigned.bin"}, ExpiresIn=300)
    u = urllib.parse.urlparse(url)
    st, body = _send_put(u.netloc, u.path + "?" + u.query, {}, [data[:1000], data[1000:]])
    expect(st == 200, f"presigned PUT without Content-Length: {st} {body[:300]!r}")
    eq(get_bytes(b, "presigned.bin"), data, "presigned chunked upload read back")
    # Past what the gateway holds to give a body its length: 411 and a
    # message that says what to send instead; nothing is written.
    big = [os.urandom(1 << 20)] * 17
    st, body = unsigned_chunked_put(b, "too-big.bin", big)
    expect(st == 411 and error_code(body) == "MissingContentLength", f"17 MiB unsized: {st} {body[:300]!r}")
    expect_error(404, None, c.head_object, Bucket=b, Key="too-big.bin")


@check("delete_objects")
def check_delete_objects():
    """DeleteObjects with existing and missing keys; DeleteObject of a missing key"""
    c = s3()
    b = new_bucket("del")
    for k in ("k1", "k2", "k3", "dir/k4"):
        c.put_object(Bucket=b, Key=k, Body=k.encode())
    r = c.delete_objects(
        Bucket=b,
        Delete={"Objects": [{"Key": k} for k in ("k1", "missing", "dir/k4", "nested/missing/key")]},
    )
    eq(
        sorted(d["Key"] for d in r.get("Deleted", [])),
        sorted(["k1", "missing", "dir/k4", "nested/missing/key"]),
        "Deleted",
    )
    eq(r.get("Errors", []), [], "Errors")
    for k in ("k1", "dir/k4"):
        eq(head_status(b, k), 404, f"HEAD {k} after DeleteObjects")
    eq(get_bytes(b, "k3"), b"k3", "k3 kept")
    r = c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k2"}, {"Key": "nope"}], "Quiet": True})
    if not lenient("moto lists the deleted keys in quiet mode"):
        eq(r.get("Deleted", []), [], "Deleted in quiet mode")
    eq(r.get("Errors", []), [], "Errors in quiet mode")
    eq(head_status(b, "k2"), 404, "HEAD k2 after quiet DeleteObjects")
    r = c.delete_object(Bucket=b, Key="never-was")
    eq(r["ResponseMetadata"]["HTTPStatusCode"], 204, "DeleteObject of a missing key")
    eq(sorted(all_keys(b)), ["k3"], "keys left")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("CommonPrefixes", []), [], "prefixes left")
    expect_error(404, "NoSuchBucket", c.delete_object, Bucket=bucket_name("nosuch"), Key="k")


@check("copy")
def check_copy():
    """CopyObject in a bucket and across buckets, metadata COPY and REPLACE"""
    c = s3()
    b = new_bucket("copy")
    b2 = new_bucket("copy2")
    data = os.urandom(300 * 1024)
    c.put_object(
        Bucket=b,
        Key="src",
        Body=data,
        ContentType="text/x-source",
        CacheControl="max-age=7",
        Metadata={"color": "red"},
    )
    r = c.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    eq(r["CopyObjectResult"]["ETag"], md5_etag(data), "ETag of the copy")
    g = c.get_object(Bucket=b, Key="dst")
    eq(g["Body"].read(), data, "copied bytes")
    eq(g.get("ContentType"), "text/x-source", "Content-Type copied")
    eq(g.get("CacheControl"), "max-age=7", "Cache-Control copied")
    eq(g.get("Metadata"), {"color": "red"}, "metadata copied")
    c.copy_object(Bucket=b2, Key="x/y/dst", CopySource={"Bucket": b, "Key": "src"})
    eq(get_bytes(b2, "x/y/dst"), data, "bytes copied across buckets")
    eq(c.head_object(Bucket=b2, Key="x/y/dst").get("Metadata"), {"color": "red"}, "metadata across buckets")
    c.copy_object(
        Bucket=b,
        Key="replaced",
        CopySource={"Bucket": b, "Key": "src"},
        MetadataDirective="REPLACE",
        ContentType="application/json",
        Metadata={"shape": "round"},
    )
    h = c.head_object(Bucket=b, Key="replaced")
    eq(h.get("Metadata"), {"shape": "round"}, "metadata after REPLACE")
    eq(h.get("ContentType"), "application/json", "Content-Type after REPLACE")
    expect(h.get("CacheControl") is None, f"Cache-Control kept after REPLACE: {h.get('CacheControl')}")
    eq(get_bytes(b, "replaced"), data, "bytes after REPLACE")
    # keys that need escaping in x-amz-copy-source
    odd = "sp ace/k+plus%&?=é"
    c.put_object(Bucket=b, Key=odd, Body=b"odd")
    c.copy_object(Bucket=b2, Key="odd-copy", CopySource={"Bucket": b, "Key": odd})
    eq(get_bytes(b2, "odd-copy"), b"odd", "copy of a key with special characters")
    # over an existing object
    c.put_object(Bucket=b, Key="over", Body=b"old")
    c.copy_object(Bucket=b, Key="over", CopySource={"Bucket": b, "Key": "src"})
    eq(get_bytes(b, "over"), data, "copy over an existing key")
    expect_error(404, "NoSuchKey", c.copy_object, Bucket=b, Key="d2", CopySource={"Bucket": b, "Key": "missing"})
    expect_absent(b, "d2", "copy of a missing source")
    eq(get_bytes(b, "src"), data, "source unchanged")


@check("presigned")
def check_presigned():
    """presigned PUT, GET (with Range), HEAD, DELETE through urllib"""
    c = s3()
    b = new_bucket("presign")
    data = os.urandom(70000)
    url = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "p/obj"}, ExpiresIn=300)
    st, hdrs, _ = http("PUT", url, body=data)
    eq(st, 200, "status of a presigned PUT")
    eq(hdrs.get("ETag"), md5_etag(data), "ETag of a presigned PUT")
    eq(get_bytes(b, "p/obj"), data, "object written by a presigned PUT")
    url = c.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "p/obj"}, ExpiresIn=300)
    st, _, body = http("GET", url)
    eq(st, 200, "status of a presigned GET")
    expect(body == data, "bytes of a presigned GET differ")
    st, hdrs, body = http("GET", url, headers={"Range": "bytes=10-19"})
    eq(st, 206, "status of a presigned ranged GET")
    eq(body, data[10:20], "bytes of a presigned ranged GET")
    url = c.generate_presigned_url("head_object", Params={"Bucket": b, "Key": "p/obj"}, ExpiresIn=300)
    st, hdrs, _ = http("HEAD", url)
    eq(st, 200, "status of a presigned HEAD")
    eq(hdrs.get("Content-Length"), str(len(data)), "Content-Length of a presigned HEAD")
    url = c.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "p/missing"}, ExpiresIn=300)
    expect_http(http("GET", url), 404, "NoSuchKey", "presigned GET of a missing key")
    url = c.generate_presigned_url("delete_object", Params={"Bucket": b, "Key": "p/obj"}, ExpiresIn=300)
    st, _, _ = http("DELETE", url)
    eq(st, 204, "status of a presigned DELETE")
    expect_absent(b, "p/obj", "after a presigned DELETE")


@check("metadata")
def check_metadata():
    """Content-Type, Content-Encoding, Cache-Control, Content-Disposition and x-amz-meta-* round trip"""
    c = s3()
    b = new_bucket("meta")
    data = b"not really gzip"
    want = {
        "ContentType": "text/x-tessera; charset=utf-8",
        "ContentEncoding": "gzip",
        "CacheControl": "max-age=60, private",
        "ContentDisposition": 'attachment; filename="report.txt"',
    }
    meta = {"Color": "Red", "multi-word-name": "a value  with spaces", "n": "42"}
    c.put_object(Bucket=b, Key="m/obj", Body=data, Metadata=meta, **want)
    want_meta = {k.lower(): v for k, v in meta.items()}
    for op in ("head_object", "get_object"):
        r = getattr(c, op)(Bucket=b, Key="m/obj")
        for k, v in want.items():
            eq(r.get(k), v, f"{op} {k}")
        eq(r.get("Metadata"), want_meta, f"{op} Metadata")
        if op == "get_object":
            eq(r["Body"].read(), data, "body")
    r = c.list_objects_v2(Bucket=b)
    eq([o["Key"] for o in r["Contents"]], ["m/obj"], "listing")
    # an overwrite without metadata drops the old metadata
    c.put_object(Bucket=b, Key="m/obj", Body=b"second", ContentType="text/plain")
    h = c.head_object(Bucket=b, Key="m/obj")
    eq(h.get("Metadata"), {}, "Metadata after an overwrite without metadata")
    eq(h.get("ContentType"), "text/plain", "Content-Type after the overwrite")
    for k in ("ContentEncoding", "CacheControl", "ContentDisposition"):
        expect(h.get(k) is None, f"{k} survived an overwrite: {h.get(k)!r}")
    eq(h["ETag"], md5_etag(b"second"), "ETag after the overwrite")


@check("awscli", timeout=600)
def check_awscli():
    """aws s3 ls, s3api, sync both ways, rm --recursive"""
    b = new_bucket("cli")
    src = os.path.join(ENV.tmp, "sync-src")
    files = {}
    for i in range(30):
        rel = f"d{i % 3}/sub{i % 2}/f{i}.bin" if i % 5 else f"top{i}.txt"
        data = os.urandom(random.randint(0, 200000))
        path = os.path.join(src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        # a whole second in the past: S3 times have whole seconds, and sync
        # sends again a file newer than its copy
        stamp = int(time.time()) - 60
        os.utime(path, (stamp, stamp))
        files[rel] = data
    aws("s3", "sync", src, f"s3://{b}/sync", "--no-progress")
    again = aws("s3", "sync", src, f"s3://{b}/sync", "--no-progress").stdout.strip()
    eq(again, "", "output of a second sync up (nothing should be sent)")
    out = aws("s3", "ls").stdout
    expect(re.search(rf"\s{re.escape(b)}$", out, re.M), f"aws s3 ls does not show {b}: {out[:500]}")
    out = aws("s3", "ls", f"s3://{b}/sync/").stdout
    pres = sorted(re.findall(r"^\s+PRE (\S+)$", out, re.M))
    eq(pres, ["d0/", "d1/", "d2/"], "PRE lines of aws s3 ls")
    objs = sorted(re.findall(r"^\S+ \S+\s+\d+ (\S+)$", out, re.M))
    eq(objs, sorted(k for k in files if "/" not in k), "objects of aws s3 ls")
    out = aws("s3", "ls", "--recursive", f"s3://{b}/sync/").stdout
    sizes = {m[1]: int(m[0]) for m in re.findall(r"^\S+ \S+\s+(\d+) sync/(\S+)$", out, re.M)}
    eq(sizes, {k: len(v) for k, v in files.items()}, "aws s3 ls --recursive")
    import json

    rel = sorted(files)[0]
    h = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", f"sync/{rel}").stdout)
    eq(h.get("ContentLength"), len(files[rel]), "s3api head-object ContentLength")
    eq(h.get("ETag"), md5_etag(files[rel]), "s3api head-object ETag")
    lo = json.loads(aws("s3api", "list-objects-v2", "--bucket", b, "--prefix", "sync/d1/", "--delimiter", "/").stdout)
    eq(
        sorted(p["Prefix"] for p in lo.get("CommonPrefixes", [])),
        sorted({f"sync/d1/{k.split('/')[1]}/" for k in files if k.startswith("d1/")}),
        "s3api list-objects-v2 CommonPrefixes",
    )
    dst = os.path.join(ENV.tmp, "sync-dst")
    aws("s3", "sync", f"s3://{b}/sync", dst, "--no-progress")
    for rel, data in files.items():
        with open(os.path.join(dst, rel), "rb") as f:
            expect(f.read() == data, f"synced down {rel} differs")
    again = aws("s3", "sync", f"s3://{b}/sync", dst, "--no-progress").stdout.strip()
    eq(again, "", "output of a second sync down (nothing should be fetched)")
    aws("s3", "rm", "--recursive", f"s3://{b}/sync", "--only-show-errors")
    r = s3().list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("KeyCount"), 0, "keys after aws s3 rm --recursive")
    aws("s3", "rb", f"s3://{b}")
    expect_error(404, None, s3().head_bucket, Bucket=b)
    shutil.rmtree(src)
    shutil.rmtree(dst)


def wait_for(pred, what, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what} (waited {timeout} s)")
        time.sleep(0.2)


@check("mount", tessera_only=True)
def check_mount():
    """the FUSE mount of the same cluster sees S3 writes, and S3 sees mount writes"""
    if not ENV.mount:
        raise Skip("TESSERA_MOUNT is not set: mount cross-checks skipped")
    c = s3()
    b = new_bucket("mount")
    root = os.path.join(ENV.mount, b)
    wait_for(lambda: os.path.isdir(root), f"bucket {b} is no directory in the mount")
    data = os.urandom(3 * MiB + 123)
    c.put_object(
        Bucket=b, Key="from-s3/a/b/obj.bin", Body=data, ContentType="text/x-tessera", Metadata={"Color": "Red"}
    )
    path = os.path.join(root, "from-s3/a/b/obj.bin")
    wait_for(lambda: os.path.exists(path), f"{path} missing in the mount")
    with open(path, "rb") as f:
        expect(f.read() == data, "bytes read in the mount differ from the S3 PUT")

    def xattr(name):
        try:
            return os.getxattr(path, name)
        except OSError as e:
            raise CheckFailed(f"getxattr {path} {name}: {e}")

    eq(xattr("user.s3.content-type"), b"text/x-tessera", "xattr user.s3.content-type")
    eq(xattr("user.s3.meta.color"), b"Red", "xattr user.s3.meta.color")
    eq(xattr("user.s3.etag").split(b" ")[0].strip(b'"'), hashlib.md5(data).hexdigest().encode(), "xattr user.s3.etag")

    # written in the mount, read through S3
    fdata = os.urandom(2 * MiB + 7)
    fpath = os.path.join(root, "from-fs/x/y/z.bin")
    os.makedirs(os.path.dirname(fpath))
    with open(fpath, "wb") as f:
        f.write(fdata)
        f.flush()
        os.fsync(f.fileno())
    wait_for(lambda: "from-fs/x/y/z.bin" in all_keys(b, "from-fs/"), "file written in the mount not listed")
    r = c.list_objects_v2(Bucket=b, Prefix="from-fs/", Delimiter="/")
    eq([p["Prefix"] for p in r.get("CommonPrefixes", [])], ["from-fs/x/"], "prefixes of the mount's directories")
    o = c.list_objects_v2(Bucket=b, Prefix="from-fs/x/y/")["Contents"][0]
    eq(o["Size"], len(fdata), "listed size of the mount's file")
    g = c.get_object(Bucket=b, Key="from-fs/x/y/z.bin")
    expect(g["Body"].read() == fdata, "bytes through S3 differ from the file written in the mount")
    expect(g["ETag"].startswith('"') and len(g["ETag"]) > 2, f"ETag of the mount's file: {g['ETag']!r}")
    eq(g.get("ContentLength"), len(fdata), "Content-Length of the mount's file")

    # deleted through S3: gone from the mount, with its empty directories
    c.delete_object(Bucket=b, Key="from-s3/a/b/obj.bin")
    wait_for(lambda: not os.path.exists(path), f"{path} still in the mount after DeleteObject")
    wait_for(
        lambda: not os.path.exists(os.path.join(root, "from-s3")), "empty directories left in the mount after delete"
    )
    # a top-level directory made in the mount is a bucket
    nb = bucket_name("mkdir")
    os.mkdir(os.path.join(ENV.mount, nb))
    with _LOCK:
        BUCKETS.append(nb)
    wait_for(lambda: nb in [x["Name"] for x in c.list_buckets()["Buckets"]], "directory made in the mount is no bucket")
    c.head_bucket(Bucket=nb)
    c.delete_bucket(Bucket=nb)
    wait_for(lambda: not os.path.exists(os.path.join(ENV.mount, nb)), "deleted bucket still a directory in the mount")


@check("auth", tessera_only=True)
def check_auth():
    """wrong secret, unknown access key, tampered Authorization header"""
    c = s3()
    b = new_bucket("auth")
    c.put_object(Bucket=b, Key="k", Body=b"data")
    bad = make_client(secret=ENV.secret[:-1] + ("A" if ENV.secret[-1] != "A" else "B"))
    expect_error(403, "SignatureDoesNotMatch", bad.list_buckets)
    expect_error(403, "SignatureDoesNotMatch", bad.get_object, Bucket=b, Key="k")
    expect_error(403, None, bad.head_object, Bucket=b, Key="k")
    expect_error(403, "SignatureDoesNotMatch", bad.put_object, Bucket=b, Key="bad-secret", Body=b"x")
    expect_error(403, "SignatureDoesNotMatch", bad.delete_object, Bucket=b, Key="k")
    expect_absent(b, "bad-secret", "PUT with a wrong secret")
    unknown = make_client(key="TK" + "0" * 18, secret=ENV.secret)
    expect_error(403, "InvalidAccessKeyId", unknown.list_buckets)
    expect_error(403, "InvalidAccessKeyId", unknown.put_object, Bucket=b, Key="bad-key", Body=b"x")
    expect_error(403, "InvalidAccessKeyId", unknown.create_bucket, Bucket=bucket_name("nokey"))
    expect_absent(b, "bad-key", "PUT with an unknown key id")
    expect_error(404, None, c.head_bucket, Bucket=bucket_name("nokey"))

    tampered = make_client()

    def flip(request, **_):
        auth = request.headers["Authorization"]
        auth = auth.decode() if isinstance(auth, bytes) else auth
        last = auth[-1]
        request.headers["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")

    tampered.meta.events.register("before-send.s3", flip)
    expect_error(403, "SignatureDoesNotMatch", tampered.list_buckets)
    expect_error(403, "SignatureDoesNotMatch", tampered.put_object, Bucket=b, Key="tampered", Body=b"x")
    expect_absent(b, "tampered", "PUT with a tampered signature")
    eq(get_bytes(b, "k"), b"data", "object after the refused requests")


def _tamper_query(url, param, fn):
    """The URL with one query parameter's value changed, every other byte kept."""
    m = re.search(rf"([?&]){re.escape(param)}=([^&]*)", url)
    assert m, f"no {param} in {url}"
    return url[: m.start(2)] + fn(m.group(2)) + url[m.end(2) :]


def _flip_hex(v):
    i = len(v) // 2
    return v[:i] + ("0" if v[i] != "0" else "1") + v[i + 1 :]


@check("presigned_bad", tessera_only=True)
def check_presigned_bad():
    """expired and tampered presigned URLs are refused"""
    c = s3()
    b = new_bucket("presignbad")
    c.put_object(Bucket=b, Key="k", Body=b"data")
    get = c.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "k"}, ExpiresIn=300)
    eq(http("GET", get)[0], 200, "the untampered URL works")
    expect_http(
        http("GET", _tamper_query(get, "X-Amz-Signature", _flip_hex)),
        403,
        "SignatureDoesNotMatch",
        "GET with one hex digit of X-Amz-Signature changed",
    )
    expect_http(
        http("GET", _tamper_query(get, "X-Amz-Expires", lambda v: str(int(v) + 1))),
        403,
        "SignatureDoesNotMatch",
        "GET with X-Amz-Expires changed",
    )
    put = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "tampered"}, ExpiresIn=300)
    expect_http(
        http("PUT", _tamper_query(put, "X-Amz-Signature", _flip_hex), body=b"x"),
        403,
        "SignatureDoesNotMatch",
        "PUT with a tampered signature",
    )
    expect_absent(b, "tampered", "presigned PUT with a tampered signature")
    get1 = c.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "k"}, ExpiresIn=1)
    put1 = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "expired"}, ExpiresIn=1)
    time.sleep(3)
    expect_http(http("GET", get1), 403, "AccessDenied", "GET with an expired presigned URL")
    expect_http(http("PUT", put1, body=b"x"), 403, "AccessDenied", "PUT with an expired presigned URL")
    expect_absent(b, "expired", "expired presigned PUT")


@check("anonymous", tessera_only=True)
def check_anonymous():
    """unsigned requests refused; public-read allows anonymous reads only"""
    c = s3()
    b = new_bucket("anon")
    other = new_bucket("anonpriv")
    c.put_object(Bucket=b, Key="dir/k", Body=b"public data")
    c.put_object(Bucket=other, Key="k", Body=b"private")
    ep = ENV.endpoint
    expect_http(http("GET", f"{ep}/"), 403, "AccessDenied", "anonymous ListBuckets")
    expect_http(http("GET", f"{ep}/{b}/dir/k"), 403, "AccessDenied", "anonymous GET")
    eq(http("HEAD", f"{ep}/{b}/dir/k")[0], 403, "anonymous HEAD")
    expect_http(http("GET", f"{ep}/{b}?list-type=2"), 403, "AccessDenied", "anonymous ListObjectsV2")
    expect_http(http("PUT", f"{ep}/{b}/new", body=b"x"), 403, "AccessDenied", "anonymous PUT")
    expect_http(http("PUT", f"{ep}/{bucket_name('anonnew')}"), 403, "AccessDenied", "anonymous CreateBucket")
    anon = make_client(unsigned=True)
    expect_error(403, "AccessDenied", anon.get_object, Bucket=b, Key="dir/k")

    c.put_bucket_acl(Bucket=b, ACL="public-read")
    st, _, body = http("GET", f"{ep}/{b}/dir/k")
    eq((st, body), (200, b"public data"), "anonymous GET of a public-read bucket")
    st, hdrs, _ = http("HEAD", f"{ep}/{b}/dir/k")
    eq(st, 200, "anonymous HEAD of a public-read bucket")
    eq(hdrs.get("Content-Length"), "11", "anonymous HEAD Content-Length")
    st, _, body = http("GET", f"{ep}/{b}?list-type=2")
    eq(st, 200, "anonymous ListObjectsV2 of a public-read bucket")
    expect(b"<Key>dir/k</Key>" in body, f"anonymous ListObjectsV2 lacks dir/k: {body[:300]!r}")
    st, _, body = http("GET", f"{ep}/{b}")
    eq(st, 200, "anonymous ListObjects of a public-read bucket")
    eq(get_bytes(b, "dir/k", client=anon), b"public data", "boto3 unsigned GET of a public-read bucket")
    expect_http(http("PUT", f"{ep}/{b}/new", body=b"x"), 403, "AccessDenied", "anonymous PUT to a public-read bucket")
    expect_error(403, "AccessDenied", anon.put_object, Bucket=b, Key="new2", Body=b"x")
    expect_http(http("DELETE", f"{ep}/{b}/dir/k"), 403, "AccessDenied", "anonymous DELETE in a public-read bucket")
    expect_absent(b, "new", "anonymous PUT")
    expect_absent(b, "new2", "anonymous PUT")
    eq(get_bytes(b, "dir/k"), b"public data", "object after the anonymous DELETE")
    expect_http(http("GET", f"{ep}/{other}/k"), 403, "AccessDenied", "anonymous GET of another, private bucket")
    c.put_bucket_acl(Bucket=b, ACL="private")
    expect_http(http("GET", f"{ep}/{b}/dir/k"), 403, "AccessDenied", "anonymous GET after ACL private")


def raw_put_short(url, declared, sent, timeout=30):
    """PUT to a presigned URL that announces `declared` body bytes, sends
    `sent`, then shuts the write side. Returns (status or None, text)."""
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port or 80), timeout=10)
    s.settimeout(timeout)
    head = (
        f"PUT {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\n"
        f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    buf = b""
    try:
        s.sendall(head)
        view = memoryview(os.urandom(sent))
        for i in range(0, sent, 1 << 16):
            s.sendall(view[i : i + (1 << 16)])
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server gave up on the request early: also a refusal
    try:
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if b"\r\n\r\n" in buf:
                hdr, _, rest = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", hdr)
                if not m or len(rest) >= int(m.group(1)):
                    break
    except socket.timeout:
        raise CheckFailed(f"short body of {sent} of {declared} bytes: no answer and no close in {timeout} s")
    finally:
        s.close()
    if not buf:
        return None, "connection closed without an answer"
    m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
    expect(m, f"short body: not an HTTP answer: {buf[:200]!r}")
    return int(m.group(1)), buf.decode("latin-1")[:400]


@check("short_body")
def check_short_body():
    """a body shorter than its Content-Length is refused and leaves nothing"""
    c = s3()
    b = new_bucket("short")
    c.put_object(Bucket=b, Key="exists", Body=b"old contents")
    cases = [("new", 1000, 500), ("dir/new-big", 20 * MiB, 12 * MiB), ("exists", 1000, 500)]
    for key, declared, sent in cases:
        url = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": key}, ExpiresIn=300)
        st, text = raw_put_short(url, declared, sent)
        expect(st is None or st >= 400, f"PUT {key}: {sent} of {declared} bytes accepted: {text}")
        note(f"{key}: {sent} of {declared} bytes: {'closed' if st is None else st} {error_code(text.encode()) or ''}")
        time.sleep(0.5)
        if key == "exists":
            eq(get_bytes(b, key), b"old contents", "object after a short overwrite")
        else:
            expect_absent(b, key, f"short PUT of {key}")
    eq(all_keys(b), ["exists"], "keys after the short PUTs")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq(r.get("CommonPrefixes", []), [], "prefixes after the short PUTs")
    eq(c.list_multipart_uploads(Bucket=b).get("Uploads", []), [], "uploads after the short PUTs")


def complete_raw(client, body, **kw):
    """CompleteMultipartUpload with this exact body, signed as sent."""

    def swap(request, **_):
        request.data = body
        for h in list(request.headers.keys()):
            if h.lower() in ("content-md5", "content-length") or h.lower().startswith("x-amz-checksum-"):
                del request.headers[h]
            elif h.lower() == "x-amz-sdk-checksum-algorithm":
                del request.headers[h]

    client.meta.events.register("before-sign.s3.CompleteMultipartUpload", swap)
    try:
        return client.complete_multipart_upload(MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]}, **kw)
    finally:
        client.meta.events.unregister("before-sign.s3.CompleteMultipartUpload", swap)


@check("multipart_errors")
def check_multipart_errors():
    """InvalidPart, InvalidPartOrder, EntityTooSmall, MalformedXML, NoSuchUpload"""
    c = s3()
    b = new_bucket("mperr")
    key = "m/obj"
    p1, p2 = os.urandom(5 * MiB), os.urandom(5 * MiB)  # either order is above the minimum part size
    uid = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
    e1 = c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e2 = c.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=2, Body=p2)["ETag"]

    def complete(parts, **kw):
        return c.complete_multipart_upload(
            Bucket=b,
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
            **kw,
        )

    expect_error(400, "InvalidPart", complete, [(1, e1), (2, md5_etag(b"something else"))])
    expect_absent(b, key, "complete with a wrong ETag")
    expect_error(400, "InvalidPart", complete, [(1, e1), (3, e2)])  # a part never uploaded
    expect_absent(b, key, "complete with a missing part")
    if not lenient("moto completes parts given out of order"):
        expect_error(400, "InvalidPartOrder", complete, [(2, e2), (1, e1)])
        expect_absent(b, key, "complete with parts out of order")
    for body in (
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>",
        b"this is not xml at all",
    ):
        if lenient("moto answers 500 to malformed XML"):
            break
        expect_error(400, "MalformedXML", complete_raw, make_client(), body, Bucket=b, Key=key, UploadId=uid)
        expect_absent(b, key, "complete with malformed XML")
    # after all that the upload still completes
    ups = c.list_multipart_uploads(Bucket=b).get("Uploads", [])
    expect(any(u["UploadId"] == uid for u in ups), "the upload is gone after a refused complete")
    r = complete([(1, e1), (2, e2)])
    eq(r["ETag"], multipart_etag([hashlib.md5(p1).digest(), hashlib.md5(p2).digest()]), "ETag")
    expect(get_bytes(b, key) == p1 + p2, "bytes of the completed upload differ")

    # a part below 5 MiB that is not the last one
    key2 = "m/small"
    uid2 = c.create_multipart_upload(Bucket=b, Key=key2)["UploadId"]
    s1 = c.upload_part(Bucket=b, Key=key2, UploadId=uid2, PartNumber=1, Body=os.urandom(MiB))["ETag"]
    s2 = c.upload_part(Bucket=b, Key=key2, UploadId=uid2, PartNumber=2, Body=os.urandom(MiB))["ETag"]
    expect_error(
        400,
        "EntityTooSmall",
        c.complete_multipart_upload,
        Bucket=b,
        Key=key2,
        UploadId=uid2,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]},
    )
    expect_absent(b, key2, "complete with a small part")
    c.abort_multipart_upload(Bucket=b, Key=key2, UploadId=uid2)
    expect_absent(b, key2, "aborted upload")

    bogus = "no-such-upload-id"
    if lenient("moto answers 500 to unknown upload ids"):
        return
    expect_error(404, "NoSuchUpload", c.upload_part, Bucket=b, Key=key, UploadId=bogus, PartNumber=1, Body=b"x")
    expect_error(404, "NoSuchUpload", c.list_parts, Bucket=b, Key=key, UploadId=bogus)
    expect_error(404, "NoSuchUpload", c.abort_multipart_upload, Bucket=b, Key=key, UploadId=bogus)
    expect_error(
        404,
        "NoSuchUpload",
        c.complete_multipart_upload,
        Bucket=b,
        Key="m/other",
        UploadId=bogus,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]},
    )
    expect_absent(b, "m/other", "complete of an unknown upload")
    eq(all_keys(b), [key], "keys at the end")
    eq(c.list_multipart_uploads(Bucket=b).get("Uploads", []), [], "uploads at the end")


BAD_KEYS = [
    "a//b",
    "../x",
    "a/../b",
    "a/..",
    "..",
    "./a",
    "a/./b",
    "a/.",
    ".",
    "/lead",
    "trail/",
    "nul\x00byte",
    "dir/nul\x00",
]


@check("invalid_keys", tessera_only=True)
def check_invalid_keys():
    """keys that cannot be paths: 400 InvalidArgument for PUT, copy and multipart"""
    c = s3()
    b = new_bucket("badkeys")
    c.put_object(Bucket=b, Key="a/b", Body=b"ab")
    c.put_object(Bucket=b, Key="x", Body=b"x")
    for k in BAD_KEYS:
        expect_error(400, "InvalidArgument", c.put_object, Bucket=b, Key=k, Body=b"bad")
        expect_error(400, "InvalidArgument", c.copy_object, Bucket=b, Key=k, CopySource={"Bucket": b, "Key": "x"})
        expect_error(400, "InvalidArgument", c.create_multipart_upload, Bucket=b, Key=k)
        url = c.generate_presigned_url("put_object", Params={"Bucket": b, "Key": k}, ExpiresIn=300)
        expect_http(http("PUT", url, body=b"bad"), 400, "InvalidArgument", f"presigned PUT {k!r}")
        # reads of such keys find nothing (400 or 404 both fine)
        expect_error((400, 404), None, c.head_object, Bucket=b, Key=k)
        expect_error((400, 404), None, c.get_object, Bucket=b, Key=k)
    eq(sorted(all_keys(b)), ["a/b", "x"], "keys after the refused PUTs")
    eq(get_bytes(b, "a/b"), b"ab", "a/b after the refused PUTs")
    eq(c.list_multipart_uploads(Bucket=b).get("Uploads", []), [], "uploads after the refused creates")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq([p["Prefix"] for p in r.get("CommonPrefixes", [])], ["a/"], "prefixes after the refused PUTs")


def key_of_length(n, seg=200, head="long/"):
    out = head
    while len(out.encode()) < n:
        left = n - len(out.encode())
        if left <= seg:
            out += "k" * left
        else:
            out += "s" * (seg) + "/"
    assert len(out.encode()) == n
    return out


@check("long_keys")
def check_long_keys():
    """1,024-byte keys work, 1,025-byte keys are KeyTooLongError"""
    c = s3()
    b = new_bucket("longkeys")
    k1024 = key_of_length(1024)
    c.put_object(Bucket=b, Key=k1024, Body=b"max")
    eq(get_bytes(b, k1024), b"max", "GET of a 1,024-byte key")
    eq(all_keys(b), [k1024], "listing of a 1,024-byte key")
    k1025 = key_of_length(1025)
    if lenient("moto takes keys over 1,024 bytes"):
        return
    expect_error(400, "KeyTooLongError", c.put_object, Bucket=b, Key=k1025, Body=b"x")
    expect_error(400, "KeyTooLongError", c.create_multipart_upload, Bucket=b, Key=k1025)
    expect_error(400, "KeyTooLongError", c.put_object, Bucket=b, Key="x" * 5000, Body=b"x")
    eq(all_keys(b), [k1024], "keys after the refused long keys")


@check("long_segments", tessera_only=True)
def check_long_segments():
    """path segments over 255 bytes (UTF-8) are KeyTooLongError"""
    c = s3()
    b = new_bucket("longseg")
    ok = ["seg/" + "a" * 255, "seg/" + "\u20ac" * 85 + "/x", "b" * 255]
    bad = ["seg/" + "a" * 256, "seg/" + "\u20ac" * 86 + "/x", "c" * 256 + "/x"]
    for k in ok:
        c.put_object(Bucket=b, Key=k, Body=b"ok")
        eq(get_bytes(b, k), b"ok", f"GET of {len(k.encode())}-byte key with a 255-byte segment")
    for k in bad:
        expect_error(400, "KeyTooLongError", c.put_object, Bucket=b, Key=k, Body=b"x")
        expect_absent(b, k, "a refused long segment")
    eq(sorted(all_keys(b), key=str.encode), sorted(ok, key=str.encode), "keys after the refused segments")


@check("directory_markers")
def check_directory_markers():
    """keys ending in '/': zero-byte folder markers by boto3 and awscli, listed, read, deleted; a body refused"""
    c = s3()
    b = new_bucket("markers")
    put = c.put_object(Bucket=b, Key="photos/", Body=b"", ContentType="application/x-directory", Metadata={"by": "boto3"})
    eq(put["ETag"], md5_etag(b""), "ETag of a marker")
    aws("s3api", "put-object", "--bucket", b, "--key", "docs/2026/")
    c.put_object(Bucket=b, Key="photos/a.jpg", Body=b"jpeg")
    h = c.head_object(Bucket=b, Key="photos/")
    eq(h["ContentLength"], 0, "Content-Length of a marker")
    eq(h["ETag"], md5_etag(b""), "HEAD ETag of a marker")
    eq(h.get("ContentType"), "application/x-directory", "Content-Type of a marker")
    eq(h.get("Metadata"), {"by": "boto3"}, "metadata of a marker")
    eq(c.get_object(Bucket=b, Key="docs/2026/")["Body"].read(), b"", "GET of a marker")
    # listed as S3 lists them: as keys, and as prefixes under a delimiter
    eq(all_keys(b), ["docs/2026/", "photos/", "photos/a.jpg"], "keys with markers")
    r = c.list_objects_v2(Bucket=b, Delimiter="/")
    eq([p["Prefix"] for p in r.get("CommonPrefixes", [])], ["docs/", "photos/"], "prefixes with markers")
    r = c.list_objects_v2(Bucket=b, Prefix="photos/", Delimiter="/")
    eq([o["Key"] for o in r.get("Contents", [])], ["photos/", "photos/a.jpg"], "a marker under its own prefix")
    seen, token = [], None
    for _ in range(10):
        kw = {"ContinuationToken": token} if token else {}
        r = c.list_objects_v2(Bucket=b, MaxKeys=1, **kw)
        seen += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            break
        token = r["NextContinuationToken"]
    eq(seen, ["docs/2026/", "photos/", "photos/a.jpg"], "markers over pages of 1")
    # the parent made on the way ("docs/") is a prefix, not an object
    expect_error(404, None, c.head_object, Bucket=b, Key="docs/")
    # a body on a marker key is refused, and nothing changes
    expect_error(400, "InvalidArgument", c.put_object, Bucket=b, Key="photos/", Body=b"bytes")
    eq(c.head_object(Bucket=b, Key="photos/")["ContentLength"], 0, "marker after a refused body")
    # deleting the marker of a folder that still holds keys keeps the keys
    c.delete_object(Bucket=b, Key="photos/")
    eq(all_keys(b), ["docs/2026/", "photos/a.jpg"], "keys after deleting a non-empty folder's marker")
    expect_error(404, None, c.head_object, Bucket=b, Key="photos/")
    # a marker outlives the last key below it
    c.put_object(Bucket=b, Key="docs/2026/report.txt", Body=b"r")
    c.delete_object(Bucket=b, Key="docs/2026/report.txt")
    eq(all_keys(b), ["docs/2026/", "photos/a.jpg"], "a marker after the last key below it went")
    out = aws("s3", "ls", f"s3://{b}/docs/").stdout
    expect("PRE 2026/" in out, f"aws s3 ls of a marker's parent: {out!r}")
    aws("s3api", "delete-object", "--bucket", b, "--key", "docs/2026/")
    eq(all_keys(b), ["photos/a.jpg"], "keys after deleting an empty marker")
    expect_error(404, None, c.head_object, Bucket=b, Key="docs/2026/")
    if ENV.mount:
        # a marker is a directory in the mount, and a directory made in the
        # mount is a marker while it is empty
        c.put_object(Bucket=b, Key="made/by/s3/", Body=b"")
        root = os.path.join(ENV.mount, b)
        wait_for(lambda: os.path.isdir(os.path.join(root, "made/by/s3")), "a marker is no directory in the mount")
        os.makedirs(os.path.join(root, "made/in/mount"))
        wait_for(lambda: "made/in/mount/" in all_keys(b, "made/"), "an empty mount directory is not listed as a marker")
        eq(c.head_object(Bucket=b, Key="made/in/mount/")["ContentLength"], 0, "HEAD of a mount directory")
        c.delete_object(Bucket=b, Key="made/in/mount/")
        wait_for(lambda: not os.path.exists(os.path.join(root, "made/in/mount")), "a deleted marker is still in the mount")
        expect(os.path.isdir(os.path.join(root, "made/by/s3")), "deleting one marker removed another")


@check("tagging")
def check_tagging():
    """object tags: x-amz-tagging on PUT, copy and multipart, Put/Get/DeleteObjectTagging, the count on GET, S3's limits"""
    c = s3()
    b = new_bucket("tags")
    put = c.put_object(Bucket=b, Key="t", Body=b"tagged", Tagging="project=blue%20sky&team=ops")
    got = c.get_object_tagging(Bucket=b, Key="t")["TagSet"]
    eq(sorted((t["Key"], t["Value"]) for t in got), [("project", "blue sky"), ("team", "ops")], "tags from x-amz-tagging")
    g = c.get_object(Bucket=b, Key="t")
    eq(g.get("TagCount"), 2, "x-amz-tagging-count")
    g["Body"].read()
    c.put_object_tagging(Bucket=b, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    got = c.get_object_tagging(Bucket=b, Key="t")["TagSet"]
    eq([(t["Key"], t["Value"]) for t in got], [("only", "one")], "tags after PutObjectTagging")
    eq(c.head_object(Bucket=b, Key="t")["ETag"], put["ETag"], "ETag after a tag change")
    # a copy takes the source's tags unless told to replace them
    c.copy_object(Bucket=b, Key="copy", CopySource={"Bucket": b, "Key": "t"})
    eq([t["Key"] for t in c.get_object_tagging(Bucket=b, Key="copy")["TagSet"]], ["only"], "tags of a copy")
    c.copy_object(
        Bucket=b, Key="copy2", CopySource={"Bucket": b, "Key": "t"}, TaggingDirective="REPLACE", Tagging="new=yes"
    )
    eq([t["Key"] for t in c.get_object_tagging(Bucket=b, Key="copy2")["TagSet"]], ["new"], "tags of a REPLACE copy")
    up = c.create_multipart_upload(Bucket=b, Key="mp", Tagging="mp=1")
    etag = c.upload_part(Bucket=b, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"part")["ETag"]
    c.complete_multipart_upload(
        Bucket=b, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    eq([t["Key"] for t in c.get_object_tagging(Bucket=b, Key="mp")["TagSet"]], ["mp"], "tags of a multipart object")
    c.delete_object_tagging(Bucket=b, Key="t")
    eq(c.get_object_tagging(Bucket=b, Key="t")["TagSet"], [], "tags after DeleteObjectTagging")
    expect("TagCount" not in c.head_object(Bucket=b, Key="t"), "an untagged object reports no tag count")
    eleven = [{"Key": f"k{i}", "Value": "v"} for i in range(11)]
    expect_error(400, "InvalidTag", c.put_object_tagging, Bucket=b, Key="t", Tagging={"TagSet": eleven})
    expect_error(400, "InvalidTag", c.put_object, Bucket=b, Key="bad", Body=b"x", Tagging="aws:x=1")
    expect_absent(b, "bad", "a PUT with a refused tag")
    expect_error(404, "NoSuchKey", c.get_object_tagging, Bucket=b, Key="missing")
    out = json.loads(aws("s3api", "get-object-tagging", "--bucket", b, "--key", "copy").stdout)
    eq([t["Key"] for t in out["TagSet"]], ["only"], "awscli get-object-tagging")
    # Bucket tags: up to 50, the same rules per tag.
    expect_error(404, "NoSuchTagSet", c.get_bucket_tagging, Bucket=b)
    tags = [{"Key": f"k{i}", "Value": f"v{i}"} for i in range(50)]
    c.put_bucket_tagging(Bucket=b, Tagging={"TagSet": tags})
    eq(c.get_bucket_tagging(Bucket=b)["TagSet"], tags, "bucket tags")
    expect_error(400, "InvalidTag", c.put_bucket_tagging, Bucket=b,
                 Tagging={"TagSet": tags + [{"Key": "one-more", "Value": ""}]})
    expect_error(400, "InvalidTag", c.put_bucket_tagging, Bucket=b, Tagging={"TagSet": [{"Key": "aws:x", "Value": ""}]})
    eq(len(c.get_bucket_tagging(Bucket=b)["TagSet"]), 50, "bucket tags after refused changes")
    c.delete_bucket_tagging(Bucket=b)
    expect_error(404, "NoSuchTagSet", c.get_bucket_tagging, Bucket=b)


@check("cors")
def check_cors():
    """bucket CORS rules: Put/Get/DeleteBucketCors, a real preflight OPTIONS, allowing headers on an actual request"""
    c = s3()
    b = new_bucket("cors")
    c.put_object(Bucket=b, Key="page.txt", Body=b"hello")
    url = f"{ENV.endpoint}/{b}/page.txt"
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"}
    st, _, body = http("OPTIONS", url, headers=preflight)
    expect_http((st, None, body), 403, "AccessForbidden", "preflight before any CORS rule")
    expect_error(404, "NoSuchCORSConfiguration", c.get_bucket_cors, Bucket=b)
    rules = [
        {
            "AllowedOrigins": ["https://*.example.com"],
            "AllowedMethods": ["GET", "PUT"],
            "AllowedHeaders": ["content-type", "x-amz-*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 600,
        },
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]},
    ]
    c.put_bucket_cors(Bucket=b, CORSConfiguration={"CORSRules": rules})
    got = c.get_bucket_cors(Bucket=b)["CORSRules"]
    eq([r["AllowedMethods"] for r in got], [["GET", "PUT"], ["GET"]], "rules read back")
    st, headers, _ = http(
        "OPTIONS", url, headers={**preflight, "Access-Control-Request-Headers": "Content-Type, X-Amz-Date"}
    )
    eq(st, 200, "status of an allowed preflight")
    eq(headers.get("Access-Control-Allow-Origin"), "https://app.example.com", "Allow-Origin of a preflight")
    expect("PUT" in (headers.get("Access-Control-Allow-Methods") or ""), f"Allow-Methods: {dict(headers)}")
    eq(headers.get("Access-Control-Max-Age"), "600", "Max-Age of a preflight")
    st, _, body = http("OPTIONS", url, headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "PUT"})
    expect_http((st, None, body), 403, "AccessForbidden", "preflight from an origin no rule allows to PUT")
    st, headers, _ = http("OPTIONS", url, headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"})
    eq((st, headers.get("Access-Control-Allow-Origin")), (200, "*"), "preflight of a GET any origin may make")
    # an actual request from a browser gets the allowing headers
    signed = c.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "page.txt"}, ExpiresIn=300)
    st, headers, body = http("GET", signed, headers={"Origin": "https://app.example.com"})
    eq((st, body), (200, b"hello"), "GET with an Origin")
    eq(headers.get("Access-Control-Allow-Origin"), "https://app.example.com", "Allow-Origin on a GET")
    eq(headers.get("Access-Control-Expose-Headers"), "ETag", "Expose-Headers on a GET")
    expect_error(400, "MalformedXML", c.put_bucket_cors, Bucket=b, CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]})
    c.delete_bucket_cors(Bucket=b)
    st, _, body = http("OPTIONS", url, headers=preflight)
    expect_http((st, None, body), 403, "AccessForbidden", "preflight after DeleteBucketCors")


@check("key_conflict", tessera_only=True)
def check_key_conflict():
    """an object cannot be a directory and a directory cannot be an object: 409 KeyConflict"""
    c = s3()
    b = new_bucket("conflict")
    c.put_object(Bucket=b, Key="f", Body=b"file f")
    c.put_object(Bucket=b, Key="dir/x", Body=b"dir x")
    expect_error(409, "KeyConflict", c.put_object, Bucket=b, Key="f/g", Body=b"x")
    expect_error(409, "KeyConflict", c.put_object, Bucket=b, Key="f/g/h", Body=b"x")
    expect_error(409, "KeyConflict", c.put_object, Bucket=b, Key="dir", Body=b"x")
    expect_error(409, "KeyConflict", c.copy_object, Bucket=b, Key="dir", CopySource={"Bucket": b, "Key": "f"})
    expect_error(409, "KeyConflict", c.copy_object, Bucket=b, Key="f/g", CopySource={"Bucket": b, "Key": "f"})
    # a multipart upload over a conflict fails at create or at complete
    try:
        uid = c.create_multipart_upload(Bucket=b, Key="f/mp")["UploadId"]
    except ClientError as e:
        eq(
            (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]),
            (409, "KeyConflict"),
            "CreateMultipartUpload under an object",
        )
    else:
        etag = c.upload_part(Bucket=b, Key="f/mp", UploadId=uid, PartNumber=1, Body=b"tiny")["ETag"]
        expect_error(
            409,
            "KeyConflict",
            c.complete_multipart_upload,
            Bucket=b,
            Key="f/mp",
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
        c.abort_multipart_upload(Bucket=b, Key="f/mp", UploadId=uid)
    # a directory is no object
    expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="dir")
    expect_error(404, None, c.head_object, Bucket=b, Key="dir")
    # deleting a directory's name deletes nothing under it
    try:
        c.delete_object(Bucket=b, Key="dir")
    except ClientError:
        pass
    c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "dir"}]})
    eq(get_bytes(b, "dir/x"), b"dir x", "dir/x after DELETE dir")
    eq(get_bytes(b, "f"), b"file f", "f after the refused PUTs")
    eq(sorted(all_keys(b)), ["dir/x", "f"], "keys after the conflicts")
    # once the directory is empty the name is free again, and the reverse
    c.delete_object(Bucket=b, Key="dir/x")
    c.put_object(Bucket=b, Key="dir", Body=b"now a file")
    c.delete_object(Bucket=b, Key="f")
    c.put_object(Bucket=b, Key="f/g", Body=b"now a dir")
    eq(sorted(all_keys(b)), ["dir", "f/g"], "keys after the names were reused")


async def _heads(host, port, reqs, n, timeout):
    statuses = collections.Counter()
    errors = collections.Counter()
    state = {"open": 0, "peak": 0}

    async def one(i):
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])
            writer.write(reqs[i % len(reqs)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head.split(b" ", 2)[1])] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted
            errors[type(e).__name__] += 1
        finally:
            if writer is not None:
                state["open"] -= 1
                writer.close()

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        errors["no answer in time"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    return statuses, errors, state["peak"]


def rclone(*args, check=True, timeout=600):
    """Runs rclone against the gateway (a remote named `t`, configured
    through the environment only); returns its stdout."""
    cmd = [shutil.which("rclone"), "--config", os.path.join(ENV.tmp, "rclone.conf"), *args]
    env = dict(os.environ)
    env.update({
        "RCLONE_CONFIG_T_TYPE": "s3",
        "RCLONE_CONFIG_T_PROVIDER": "Other",
        "RCLONE_CONFIG_T_ACCESS_KEY_ID": ENV.key,
        "RCLONE_CONFIG_T_SECRET_ACCESS_KEY": ENV.secret,
        "RCLONE_CONFIG_T_ENDPOINT": ENV.endpoint,
        "RCLONE_CONFIG_T_REGION": REGION,
        "RCLONE_CONFIG_T_FORCE_PATH_STYLE": "true",
    })
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise CheckFailed(f"rclone {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[-800:]}")
    return p.stdout


def tree(root):
    """{relative path: bytes} of the files below root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@check("rclone", timeout=900)
def check_rclone():
    """rclone (a second real client) syncs a tree up and down a versioned bucket with directory markers"""
    if not shutil.which("rclone"):
        raise Skip("rclone is not installed (Debian's package `rclone`)")
    c = s3()
    b = new_bucket("rclone")
    c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    # Folders as the console and s3a make them, before rclone comes.
    c.put_object(Bucket=b, Key="d/", Body=b"")
    c.put_object(Bucket=b, Key="only-a-marker/", Body=b"")
    src = os.path.join(ENV.tmp, "rclone-src")
    files = {
        "a.txt": b"first\n",
        "d/b.bin": os.urandom(200_000),
        "d/e/c.txt": b"deep\n",
        "big.bin": os.urandom(12 * MiB),
        "spaces and ü.txt": b"unicode\n",
    }
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    flags = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1", "--low-level-retries", "1"]
    rclone("sync", src, f"t:{b}", *flags)
    rclone("check", src, f"t:{b}", "--one-way")
    keys = all_keys(b)
    for rel in files:
        expect(rel in keys, f"{rel} after rclone sync up: {keys}")
    expect(c.head_object(Bucket=b, Key="big.bin")["ETag"].strip('"').endswith("-3"), "big.bin went up in parts")
    eq(get_bytes(b, "d/e/c.txt"), b"deep\n", "a file rclone wrote, read with boto3")
    # A change and a removal: new versions and a delete marker.
    with open(os.path.join(src, "a.txt"), "wb") as f:
        f.write(b"second\n")
    os.remove(os.path.join(src, "d/e/c.txt"))
    rclone("sync", src, f"t:{b}", *flags)
    eq(get_bytes(b, "a.txt"), b"second\n", "a.txt after the second sync")
    expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="d/e/c.txt")
    versions, _ = versions_of(c, b, Prefix="a.txt")
    eq(len([v for v in versions if not v[3]]), 2, "a.txt's versions")
    versions, _ = versions_of(c, b, Prefix="d/e/c.txt")
    eq(sorted(v[3] for v in versions), [False, True], "d/e/c.txt: its version and a delete marker")
    listed = rclone("lsf", "-R", "--s3-versions", f"t:{b}")
    old = [line for line in listed.splitlines() if line.startswith("a-v") and line.endswith(".txt")]
    expect(old, f"rclone --s3-versions lists a.txt's old version: {listed}")
    # Down again, into an empty folder: the same tree.
    dst = os.path.join(ENV.tmp, "rclone-dst")
    rclone("sync", f"t:{b}", dst, *flags)
    want = tree(src)
    eq(sorted(tree(dst)), sorted(want), "the tree rclone brought down")
    expect(tree(dst) == want, "the bytes rclone brought down")
    rclone("check", src, f"t:{b}")
    # The markers are still there as folders.
    expect(c.head_object(Bucket=b, Key="only-a-marker/")["ContentLength"] == 0, "a marker rclone left alone")
    if ENV.mount:
        with open(os.path.join(ENV.mount, b, "d", "b.bin"), "rb") as f:
            expect(f.read() == files["d/b.bin"], "the mount sees what rclone wrote")
    delete_everything(c, b)
    for marker in ("d/", "only-a-marker/"):
        c.delete_object(Bucket=b, Key=marker)


def versions_of(c, b, **kw):
    """(key, version id, is latest, is a delete marker): the page's versions
    in order, then its delete markers in order; and the response."""
    r = c.list_object_versions(Bucket=b, **kw)
    out = [(v["Key"], v["VersionId"], v["IsLatest"], False) for v in r.get("Versions", [])]
    out += [(m["Key"], m["VersionId"], m["IsLatest"], True) for m in r.get("DeleteMarkers", [])]
    return out, r


@check("versioning", timeout=300)
def check_versioning():
    """versions: overwrite, delete marker, get/head/copy by version, delete a version, list at page size 1, suspend"""
    c = s3()
    b = new_bucket("versions")
    eq(c.get_bucket_versioning(Bucket=b).get("Status"), None, "status before")
    c.put_object(Bucket=b, Key="k", Body=b"before versioning")
    c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    eq(c.get_bucket_versioning(Bucket=b).get("Status"), "Enabled", "status")
    v1 = c.put_object(Bucket=b, Key="k", Body=b"one")["VersionId"]
    time.sleep(0.01)
    v2 = c.put_object(Bucket=b, Key="k", Body=b"two")["VersionId"]
    expect(v1 and v2 and len({v1, v2, "null"}) == 3, f"version ids {v1} {v2}")
    eq(c.get_object(Bucket=b, Key="k")["VersionId"], v2, "GET's version id")
    if ENV.mount:
        # A key's first version moves nothing, so it makes no store directory.
        c.put_object(Bucket=b, Key="first-only", Body=b"1")
        store = os.path.join(ENV.mount.encode(), b.encode(), b"\xffversions")
        expect(os.path.isdir(os.path.join(store, b"k")), "the version store holds k's versions")
        expect(not os.path.exists(os.path.join(store, b"first-only")), "a first version made a store directory")
        c.delete_object(Bucket=b, Key="first-only", VersionId=c.head_object(Bucket=b, Key="first-only")["VersionId"])
    eq(get_bytes(b, "k"), b"two", "the current version")
    eq(get_bytes(b, "k", VersionId=v1), b"one", "an older version")
    eq(get_bytes(b, "k", VersionId="null"), b"before versioning", "the null version")
    h = c.head_object(Bucket=b, Key="k", VersionId=v1)
    eq((h["ContentLength"], h["VersionId"], h["ETag"]), (3, v1, md5_etag(b"one")), "HEAD of a version")
    # A delete makes a marker; the versions stay.
    d = c.delete_object(Bucket=b, Key="k")
    expect(d.get("DeleteMarker") is True and d.get("VersionId"), f"delete answered {d}")
    dm = d["VersionId"]
    expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="k")
    eq(get_bytes(b, "k", VersionId=v2), b"two", "a version under a delete marker")
    expect_error(405, "MethodNotAllowed", c.get_object, Bucket=b, Key="k", VersionId=dm)
    expect_error(404, "NoSuchVersion", c.get_object, Bucket=b, Key="k", VersionId="0" * 32)
    expect_error(400, "InvalidArgument", c.get_object, Bucket=b, Key="k", VersionId="bogus")
    eq(c.list_objects_v2(Bucket=b).get("KeyCount"), 0, "keys under a delete marker")
    got, _ = versions_of(c, b)
    eq([(k, v, latest, marker) for k, v, latest, marker in got],
       [("k", v2, False, False), ("k", v1, False, False), ("k", "null", False, False), ("k", dm, True, True)],
       "versions after the delete (versions, then delete markers)")
    # More keys, for the listing's order and pages.
    made = {}
    for key, bodies in [("a/deep", [b"x"]), ("k2", [b"p", b"q"]), ("z", [b"z"])]:
        for body in bodies:
            made.setdefault(key, []).insert(0, c.put_object(Bucket=b, Key=key, Body=body)["VersionId"])
            time.sleep(0.01)
    # S3's order: keys in order, each key's versions newest first.
    want = [("a/deep", made["a/deep"][0], True, False), ("k", dm, True, True),
            ("k", v2, False, False), ("k", v1, False, False), ("k", "null", False, False),
            ("k2", made["k2"][0], True, False), ("k2", made["k2"][1], False, False),
            ("z", made["z"][0], True, False)]
    full, r = versions_of(c, b)
    eq(r["IsTruncated"], False, "one page holds all")
    eq(full, [e for e in want if not e[3]] + [e for e in want if e[3]], "all versions")
    paged, km, vm = [], None, None
    for _ in range(20):
        kw = {"MaxKeys": 1}
        if km is not None:
            kw.update(KeyMarker=km, VersionIdMarker=vm or "")
        page, r = versions_of(c, b, **kw)
        paged += page
        if not r["IsTruncated"]:
            break
        km, vm = r["NextKeyMarker"], r.get("NextVersionIdMarker")
    eq(paged, want, "versions listed at page size 1")
    d = c.list_object_versions(Bucket=b, Delimiter="/")
    eq([p["Prefix"] for p in d.get("CommonPrefixes", [])], ["a/"], "common prefixes of versions")
    # Deleting the marker brings the object back; deleting the current
    # version makes the one before it current.
    c.delete_object(Bucket=b, Key="k", VersionId=dm)
    eq(get_bytes(b, "k"), b"two", "after the marker is deleted")
    r = c.delete_object(Bucket=b, Key="k", VersionId=v2)
    eq(r.get("VersionId"), v2, "the deleted version's id")
    eq(c.get_object(Bucket=b, Key="k")["VersionId"], v1, "the version before becomes current")
    expect_error(404, "NoSuchVersion", c.get_object, Bucket=b, Key="k", VersionId=v2)
    # Restoring the null version by copying it onto the key.
    r = c.copy_object(Bucket=b, Key="k", CopySource={"Bucket": b, "Key": "k", "VersionId": "null"})
    eq(r.get("CopySourceVersionId"), "null", "the copy's source version")
    v3 = r["VersionId"]
    eq(get_bytes(b, "k"), b"before versioning", "restored")
    eq(r["CopyObjectResult"]["ETag"], md5_etag(b"before versioning"), "a restored version's ETag")
    # DeleteObjects with version ids.
    k2 = made["k2"]
    r = c.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "k2", "VersionId": v} for v in k2]})
    eq(sorted(x["VersionId"] for x in r["Deleted"]), sorted(k2), "versions deleted in a batch")
    expect_error(404, "NoSuchKey", c.get_object, Bucket=b, Key="k2")
    # A multipart completion makes a version.
    up = c.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
    e = c.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=b"m" * 100)["ETag"]
    r = c.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    expect(r.get("VersionId") not in (None, "null"), f"a completion's version id: {r.get('VersionId')}")
    # A part copied from an older version.
    up = c.create_multipart_upload(Bucket=b, Key="from-old")["UploadId"]
    r = c.upload_part_copy(Bucket=b, Key="from-old", UploadId=up, PartNumber=1,
                           CopySource={"Bucket": b, "Key": "k", "VersionId": "null"})
    eq(r.get("CopySourceVersionId"), "null", "UploadPartCopy's source version")
    c.complete_multipart_upload(Bucket=b, Key="from-old", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]}]})
    eq(get_bytes(b, "from-old"), b"before versioning", "a part copied from the null version")
    # A write through the mount makes a version, as a PUT does.
    if ENV.mount:
        c.put_object(Bucket=b, Key="mounted.txt", Body=b"from s3")
        first = c.head_object(Bucket=b, Key="mounted.txt")["VersionId"]
        with open(os.path.join(ENV.mount, b, "mounted.txt"), "wb") as f:
            f.write(b"from the mount")
        eq(get_bytes(b, "mounted.txt"), b"from the mount", "after a write through the mount")
        eq(get_bytes(b, "mounted.txt", VersionId=first), b"from s3", "the version the mount's write replaced")
        now = c.head_object(Bucket=b, Key="mounted.txt")["VersionId"]
        expect(now not in (first, "null"), f"the mount's write took a new version id: {now}")
        ids = [v for k, v, *_ in versions_of(c, b, Prefix="mounted.txt")[0]]
        eq(ids, [now, first], "versions after a write through the mount")
    # Suspended: writes replace the null version and keep the others.
    c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Suspended"})
    eq(c.get_bucket_versioning(Bucket=b).get("Status"), "Suspended", "status")
    eq(c.put_object(Bucket=b, Key="k", Body=b"suspended").get("VersionId"), "null", "a suspended PUT's version")
    c.put_object(Bucket=b, Key="k", Body=b"suspended again")
    ids = [v for k, v, *_ in versions_of(c, b, Prefix="k")[0] if k == "k"]
    eq(ids, ["null", v3, v1], "versions of k while suspended")
    eq(get_bytes(b, "k", VersionId=v1), b"one", "an old version while suspended")
    eq(get_bytes(b, "k"), b"suspended again", "the current null version")
    if ENV.mount:
        with open(os.path.join(ENV.mount, b, "k"), "rb") as f:
            eq(f.read(), b"suspended again", "the mount shows the current version")
    expect_error(409, "BucketNotEmpty", c.delete_bucket, Bucket=b)
    delete_everything(c, b)
    eq(versions_of(c, b)[0], [], "versions after deleting them all")
    c.delete_bucket(Bucket=b)


def tessera_admin(*args):
    """Runs `tessera admin ARGS --json` against the cluster under test."""
    cmd = [ENV.tessera_bin, "admin", *args, "--config", ENV.tessera_config, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise CheckFailed(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout) if p.stdout.strip() else None


# Gateways read a grant again after a second.
GRANT_GIVEN_S = 1.5
GRANT_WITHDRAWN_S = 1.5


@check("bucket_keys", timeout=180, tessera_only=True)
def check_bucket_keys():
    """two keys: each reaches only its own buckets, every operation on the other's is 403 until granted"""
    if not (ENV.tessera_bin and ENV.tessera_config):
        raise Skip("TESSERA_BIN and TESSERA_CLIENT_CONFIG are not set: key management skipped")
    made = [tessera_admin("key", "create", "--description", f"s3 test {who}") for who in "ab"]
    a = make_client(key=made[0]["id"], secret=made[0]["secret"])
    b = make_client(key=made[1]["id"], secret=made[1]["secret"])
    b_id = made[1]["id"]
    mine, theirs = bucket_name("key-a"), bucket_name("key-b")
    a.create_bucket(Bucket=mine)
    b.create_bucket(Bucket=theirs)
    with _LOCK:
        BUCKETS.extend([mine, theirs])
    a.put_object(Bucket=mine, Key="k", Body=b"from a", Tagging="t=1")
    b.put_object(Bucket=theirs, Key="own", Body=b"b's own")
    upload = a.create_multipart_upload(Bucket=mine, Key="mp")["UploadId"]
    b_upload = b.create_multipart_upload(Bucket=theirs, Key="mp")["UploadId"]
    listed = [x["Name"] for x in b.list_buckets()["Buckets"]]
    expect(theirs in listed and mine not in listed, f"b lists {listed}")
    expect(mine in [x["Name"] for x in s3().list_buckets()["Buckets"]], "the all-bucket key lists every bucket")
    expect_error(409, "BucketAlreadyExists", b.create_bucket, Bucket=mine)
    expect_error(409, "BucketAlreadyOwnedByYou", a.create_bucket, Bucket=mine)
    cors = {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]}
    refused = [
        (b.get_object, dict(Bucket=mine, Key="k")),
        (b.list_objects_v2, dict(Bucket=mine)),
        (b.list_objects, dict(Bucket=mine)),
        (b.list_object_versions, dict(Bucket=mine)),
        (b.get_bucket_location, dict(Bucket=mine)),
        (b.get_object_tagging, dict(Bucket=mine, Key="k")),
        (b.list_multipart_uploads, dict(Bucket=mine)),
        (b.list_parts, dict(Bucket=mine, Key="mp", UploadId=upload)),
        (b.get_bucket_acl, dict(Bucket=mine)),
        (b.put_object, dict(Bucket=mine, Key="k", Body=b"from b")),
        (b.put_object, dict(Bucket=mine, Key="new", Body=b"from b")),
        (b.delete_object, dict(Bucket=mine, Key="k")),
        (b.delete_objects, dict(Bucket=mine, Delete={"Objects": [{"Key": "k"}]})),
        (b.copy_object, dict(Bucket=mine, Key="copied", CopySource={"Bucket": theirs, "Key": "own"})),
        (b.copy_object, dict(Bucket=theirs, Key="stolen", CopySource={"Bucket": mine, "Key": "k"})),
        (b.create_multipart_upload, dict(Bucket=mine, Key="mp2")),
        (b.upload_part, dict(Bucket=mine, Key="mp", UploadId=upload, PartNumber=1, Body=b"x")),
        (b.upload_part_copy, dict(Bucket=theirs, Key="mp", UploadId=b_upload, PartNumber=1,
                                  CopySource={"Bucket": mine, "Key": "k"})),
        (b.complete_multipart_upload, dict(Bucket=mine, Key="mp", UploadId=upload,
                                           MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0"'}]})),
        (b.abort_multipart_upload, dict(Bucket=mine, Key="mp", UploadId=upload)),
        (b.put_object_tagging, dict(Bucket=mine, Key="k", Tagging={"TagSet": []})),
        (b.delete_object_tagging, dict(Bucket=mine, Key="k")),
        (b.put_bucket_acl, dict(Bucket=mine, ACL="public-read")),
        (b.put_bucket_cors, dict(Bucket=mine, CORSConfiguration=cors)),
        (b.get_bucket_cors, dict(Bucket=mine)),
        (b.delete_bucket_cors, dict(Bucket=mine)),
        (b.delete_bucket, dict(Bucket=mine)),
    ]
    for fn, kw in refused:
        expect_error(403, "AccessDenied", fn, **kw)
    expect_error(403, None, b.head_object, Bucket=mine, Key="k")
    expect_error(403, None, b.head_bucket, Bucket=mine)
    # Nothing changed.
    eq(get_bytes(mine, "k", client=a), b"from a", "a's object after b's refused requests")
    eq(sorted(x["Key"] for x in a.list_objects_v2(Bucket=mine).get("Contents", [])), ["k"], "a's keys")
    eq([u["UploadId"] for u in a.list_multipart_uploads(Bucket=mine).get("Uploads", [])], [upload], "a's uploads")
    eq(a.get_object_tagging(Bucket=mine, Key="k")["TagSet"], [{"Key": "t", "Value": "1"}], "a's tags")
    eq(sorted(x["Key"] for x in b.list_objects_v2(Bucket=theirs).get("Contents", [])), ["own"], "b's keys")
    expect_error(404, "NoSuchCORSConfiguration", a.get_bucket_cors, Bucket=mine)

    # Read, then write, then owner: each opens what it names and no more.
    tessera_admin("key", "allow", b_id, mine, "--read")
    time.sleep(GRANT_GIVEN_S)
    eq(get_bytes(mine, "k", client=b), b"from a", "b reads once granted read")
    eq([x["Key"] for x in b.list_objects_v2(Bucket=mine).get("Contents", [])], ["k"], "b lists")
    expect(mine in [x["Name"] for x in b.list_buckets()["Buckets"]], "b lists the granted bucket")
    b.head_bucket(Bucket=mine)
    expect_error(403, "AccessDenied", b.put_object, Bucket=mine, Key="new", Body=b"from b")
    b.copy_object(Bucket=theirs, Key="copied-in", CopySource={"Bucket": mine, "Key": "k"})
    eq(get_bytes(theirs, "copied-in", client=b), b"from a", "a copy out of a readable bucket")
    tessera_admin("key", "allow", b_id, mine, "--write")
    time.sleep(GRANT_GIVEN_S)
    b.put_object(Bucket=mine, Key="new", Body=b"from b")
    b.upload_part(Bucket=mine, Key="mp", UploadId=upload, PartNumber=1, Body=b"x")
    b.abort_multipart_upload(Bucket=mine, Key="mp", UploadId=upload)
    expect_error(403, "AccessDenied", b.delete_bucket, Bucket=mine)
    expect_error(403, "AccessDenied", b.put_bucket_cors, Bucket=mine, CORSConfiguration=cors)
    tessera_admin("key", "allow", b_id, mine, "--owner")
    time.sleep(GRANT_GIVEN_S)
    b.put_bucket_cors(Bucket=mine, CORSConfiguration=cors)
    info = tessera_admin("key", "info", b_id)
    held = {g["bucket"]: (g["read"], g["write"], g["owner"]) for g in info["grants"]}
    eq(held, {mine: (True, True, True), theirs: (True, True, True)}, "key info")
    eq(info["all_buckets"], False, "a new key's scope")

    # Withdrawn, it is refused again once the gateway's cache expires.
    tessera_admin("key", "deny", b_id, mine)
    time.sleep(GRANT_WITHDRAWN_S)
    expect_error(403, "AccessDenied", b.get_object, Bucket=mine, Key="k")
    expect(mine not in [x["Name"] for x in b.list_buckets()["Buckets"]], "b no longer lists it")
    # Grants through S3's ACLs: a key's id is its canonical user id.
    a.put_bucket_acl(Bucket=mine, GrantRead=f'id="{b_id}"')
    time.sleep(GRANT_GIVEN_S)
    eq(get_bytes(mine, "k", client=b), b"from a", "b reads through an ACL grant")
    grants = a.get_bucket_acl(Bucket=mine)["Grants"]
    expect(any(g["Grantee"].get("ID") == b_id and g["Permission"] == "READ" for g in grants),
           f"the bucket's ACL lists b's grant: {grants}")
    expect_error(400, "InvalidArgument", a.put_bucket_acl, Bucket=mine, GrantRead='id="TK00000000000000NONE"')
    a.put_bucket_acl(Bucket=mine, ACL="private")
    time.sleep(GRANT_WITHDRAWN_S)
    expect_error(403, "AccessDenied", b.get_object, Bucket=mine, Key="k")
    a.head_bucket(Bucket=mine)  # the caller keeps its own grant
    b.abort_multipart_upload(Bucket=theirs, Key="mp", UploadId=b_upload)
    for made_key in made:
        tessera_admin("key", "delete", made_key["id"])


@check("concurrent_heads", timeout=600)
def check_concurrent_heads():
    """10,000 concurrent presigned HEADs on raw connections: 200 (or 503 SlowDown), and the gateway lives on"""
    c = s3()
    b = new_bucket("heads")
    n = ENV.heads
    keys = [f"h/{i}" for i in range(16)]
    for k in keys:
        c.put_object(Bucket=b, Key=k, Body=k.encode())
    need = n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need  # above hard: root only
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        except (ValueError, OSError) as e:
            raise CheckFailed(f"cannot raise RLIMIT_NOFILE to {need} (soft {soft}, hard {hard}): {e}")
    u = urllib.parse.urlsplit(ENV.endpoint)
    host = socket.gethostbyname(u.hostname)
    reqs = []
    for k in keys:
        url = urllib.parse.urlsplit(
            c.generate_presigned_url("head_object", Params={"Bucket": b, "Key": k}, ExpiresIn=900)
        )
        reqs.append(f"HEAD {url.path}?{url.query} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
    t = time.monotonic()
    statuses, errors, peak = asyncio.run(_heads(host, u.port or 80, reqs, n, 300))
    took = time.monotonic() - t
    note(f"{n} HEADs in {took:.1f} s: {dict(statuses)}, errors {dict(errors)}, {peak} connections open at once")
    bad = {s: k for s, k in statuses.items() if s not in (200, 503)}
    expect(not errors and not bad, f"HEADs that failed: statuses {bad}, errors {dict(errors)}")
    expect(statuses[200] > 0, "no HEAD answered 200")
    # and it still answers
    h = c.head_object(Bucket=b, Key=keys[0])
    eq(h["ContentLength"], len(keys[0]), "HEAD after the storm")
    eq(sorted(all_keys(b)), sorted(keys), "listing after the storm")
    c.put_object(Bucket=b, Key="after", Body=b"alive")
    eq(get_bytes(b, "after"), b"alive", "PUT and GET after the storm")


# ---------------------------------------------------------------------------


def delete_everything(c, b):
    """Deletes every version and delete marker (every object, unversioned)."""
    entries = []
    for page in c.get_paginator("list_object_versions").paginate(Bucket=b):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            entries.append({"Key": v["Key"], "VersionId": v["VersionId"]})
    for i in range(0, len(entries), 1000):
        c.delete_objects(Bucket=b, Delete={"Objects": entries[i : i + 1000], "Quiet": True})


def cleanup():
    c = make_client()
    for b in BUCKETS:
        try:
            c.head_bucket(Bucket=b)
        except ClientError:
            continue
        try:
            for u in c.list_multipart_uploads(Bucket=b).get("Uploads", []):
                c.abort_multipart_upload(Bucket=b, Key=u["Key"], UploadId=u["UploadId"])
            delete_everything(c, b)
            c.delete_bucket(Bucket=b)
        except Exception as e:  # noqa: BLE001
            print(f"warning: cleanup of bucket {b}: {e}", flush=True)


def main():
    ap = argparse.ArgumentParser(description="S3 conformance checks for the Tessera gateway")
    ap.add_argument("--only", help="comma-separated check names")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--keep", action="store_true", help="keep buckets and temp files")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    args = ap.parse_args()
    if args.list:
        for ch in CHECKS:
            print(f"{ch.name:18} {ch.doc}{'  [Tessera only]' if ch.tessera_only else ''}")
        return 0
    selected = CHECKS
    names = []
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {ch.name for ch in CHECKS}
        unknown = [n for n in names if n not in known]
        if unknown:
            sys.exit(f"unknown checks {unknown}; known: {sorted(known)}")
        selected = [ch for ch in CHECKS if ch.name in names]
    setup_env()
    print(
        f"s3 checks against {ENV.endpoint} (run {ENV.run}, boto3 {boto3.__version__}, botocore "
        f"{botocore.__version__}, aws {ENV.aws_cli}, mount {ENV.mount or '-'}"
        f"{', lenient: ' + ENV.lenient if ENV.lenient else ''})",
        flush=True,
    )
    passed, failed, skipped = [], [], []
    start = time.monotonic()
    try:
        for ch in selected:
            if ch.tessera_only and ENV.lenient and ch.name not in names:
                print(f"SKIP  {ch.name:18}        (S3_TEST_LENIENT={ENV.lenient}: Tessera-only)", flush=True)
                skipped.append(ch.name)
                continue
            print(f"RUN   {ch.name:18} {ch.doc} (limit {ch.timeout} s)", flush=True)
            faulthandler.dump_traceback_later(ch.timeout, exit=True)
            t = time.monotonic()
            try:
                ch.fn()
            except Skip as e:
                print(f"SKIP  {ch.name:18} {time.monotonic() - t:6.1f} s  {e}", flush=True)
                skipped.append(ch.name)
            except Exception as e:  # noqa: BLE001
                took = time.monotonic() - t
                if not isinstance(e, CheckFailed):
                    traceback.print_exc(file=sys.stdout)
                print(f"FAIL  {ch.name:18} {took:6.1f} s  {type(e).__name__}: {e}", flush=True)
                failed.append(ch.name)
                if args.fail_fast:
                    break
            else:
                print(f"PASS  {ch.name:18} {time.monotonic() - t:6.1f} s", flush=True)
                passed.append(ch.name)
            finally:
                faulthandler.cancel_dump_traceback_later()
    finally:
        if not args.keep:
            faulthandler.dump_traceback_later(300, exit=True)
            cleanup()
            faulthandler.cancel_dump_traceback_later()
            shutil.rmtree(ENV.tmp, ignore_errors=True)
    print(f"total {time.monotonic() - start:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"s3: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
