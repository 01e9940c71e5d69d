#!/usr/bin/env python3
"""Probe an S3 endpoint for the operations govcfs relies on.

    python3 scripts/s3-probe.py ENDPOINT_URL ACCESS_KEY SECRET [BUCKET]

Basic operations (create bucket, put/get, ranged get, multipart upload of
3 x 5 MiB, copy, list with delimiter, delete) must work: the script exits
non-zero at the first one that fails.  Conditional writes (If-None-Match: *,
If-Match: <etag>) are only reported, as a table of the HTTP status the server
returned and whether that honours the S3 semantics.

Needs boto3 (python3 -m pip install --user boto3).  For plain-HTTP loopback
endpoints run it with AWS_CA_BUNDLE unset (env -u AWS_CA_BUNDLE ...).
"""
import hashlib
import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

MIB = 1024 * 1024


def status_of(fn):
    """Run fn(); return (http_status, error_code_or_None, response_or_None)."""
    try:
        resp = fn()
        return resp["ResponseMetadata"]["HTTPStatusCode"], None, resp
    except ClientError as e:
        return (e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                e.response.get("Error", {}).get("Code"), None)


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, access, secret = sys.argv[1:4]
    bucket = sys.argv[4] if len(sys.argv) == 5 else "govcfs-test"

    cfg_kwargs = dict(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    # boto3 >= 1.36 sends CRC32 checksum trailers (aws-chunked) by default;
    # older servers (Ceph 16 radosgw, old moto) reject or mangle them.
    try:
        cfg = Config(request_checksum_calculation="when_required",
                     response_checksum_validation="when_required", **cfg_kwargs)
    except TypeError:  # older botocore without those options
        cfg = Config(**cfg_kwargs)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                      aws_secret_access_key=secret, region_name="us-east-1",
                      config=cfg)

    failures = []
    quirks = []

    def step(name, fn):
        t = time.monotonic()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - report any failure
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            failures.append(name)
            raise SystemExit(1)
        print(f"ok   {name} ({(time.monotonic() - t) * 1000:.0f} ms)")
        return out

    def check(cond, msg):
        if not cond:
            raise AssertionError(msg)

    # ------------------------------------------------------------ basic ops
    def create_bucket():
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",):
                raise
        # start clean if a previous run left objects behind
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=o["Key"])

    step("create bucket", create_bucket)

    body = b"hello govcfs 0123456789"

    def put_get():
        r = s3.put_object(Bucket=bucket, Key="obj", Body=body)
        check(r["ETag"].strip('"') == hashlib.md5(body).hexdigest(), f"etag {r['ETag']}")
        got = s3.get_object(Bucket=bucket, Key="obj")["Body"].read()
        check(got == body, f"get returned {got!r}")

    step("put/get object", put_get)

    def ranged():
        r = s3.get_object(Bucket=bucket, Key="obj", Range="bytes=6-11")
        got = r["Body"].read()
        check(r["ResponseMetadata"]["HTTPStatusCode"] == 206,
              f"status {r['ResponseMetadata']['HTTPStatusCode']}")
        check(got == body[6:12], f"range returned {got!r}")
        check(r.get("ContentRange") == f"bytes 6-11/{len(body)}",
              f"content-range {r.get('ContentRange')}")

    step("ranged get (bytes=6-11)", ranged)

    parts_data = [os.urandom(5 * MIB) for _ in range(3)]

    def multipart():
        mpu = s3.create_multipart_upload(Bucket=bucket, Key="mp")
        uid = mpu["UploadId"]
        parts = []
        for i, data in enumerate(parts_data, start=1):
            r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid,
                               PartNumber=i, Body=data)
            parts.append({"PartNumber": i, "ETag": r["ETag"]})
        r = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                         MultipartUpload={"Parts": parts})
        if not r.get("ETag"):
            # Ceph 16 radosgw answers <ETag></ETag> here (known RGW bug,
            # Red Hat BZ 2266579); the object itself has the right ETag.
            quirks.append("CompleteMultipartUpload returned an empty ETag")
        else:
            check(r["ETag"].strip('"').endswith("-3"), f"mpu etag {r['ETag']}")
        head = s3.head_object(Bucket=bucket, Key="mp")
        check(head["ETag"].strip('"').endswith("-3"), f"head mpu etag {head['ETag']}")
        check(head["ContentLength"] == 15 * MIB, f"mpu size {head['ContentLength']}")
        got = s3.get_object(Bucket=bucket, Key="mp")["Body"].read()
        check(got == b"".join(parts_data), f"mpu content mismatch (len {len(got)})")
        r = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={5 * MIB - 2}-{5 * MIB + 1}")
        check(r["Body"].read() == b"".join(parts_data)[5 * MIB - 2:5 * MIB + 2],
              "ranged get across part boundary")

    step("multipart upload 3 x 5 MiB", multipart)

    def copy():
        s3.copy_object(Bucket=bucket, Key="obj-copy",
                       CopySource={"Bucket": bucket, "Key": "obj"})
        got = s3.get_object(Bucket=bucket, Key="obj-copy")["Body"].read()
        check(got == body, f"copy returned {got!r}")

    step("copy object", copy)

    def list_delim():
        for k in ("dir/a", "dir/b", "dir/sub/c"):
            s3.put_object(Bucket=bucket, Key=k, Body=b"x")
        r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
        keys = sorted(o["Key"] for o in r.get("Contents", []))
        prefixes = sorted(p["Prefix"] for p in r.get("CommonPrefixes", []))
        check(keys == ["mp", "obj", "obj-copy"], f"keys {keys}")
        check(prefixes == ["dir/"], f"prefixes {prefixes}")
        r = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
        keys = sorted(o["Key"] for o in r.get("Contents", []))
        prefixes = sorted(p["Prefix"] for p in r.get("CommonPrefixes", []))
        check(keys == ["dir/a", "dir/b"], f"keys under dir/ {keys}")
        check(prefixes == ["dir/sub/"], f"prefixes under dir/ {prefixes}")

    step("list with delimiter", list_delim)

    def delete():
        s3.delete_object(Bucket=bucket, Key="obj-copy")
        st, code, _ = status_of(lambda: s3.head_object(Bucket=bucket, Key="obj-copy"))
        check(st == 404, f"head after delete: {st} {code}")
        r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": k} for k in ("dir/a", "dir/b", "dir/sub/c", "mp")]})
        check(not r.get("Errors"), f"delete_objects errors {r.get('Errors')}")

    step("delete object(s)", delete)

    # ------------------------------------------------------ conditional puts
    rows = []

    def body_of(key):
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError:
            return None

    def row(case, expect, fn, key, new_body, also_ok=()):
        """Run one conditional write of new_body to key; expect HTTP status expect."""
        before = body_of(key)
        try:
            st, code, resp = status_of(fn)
        except Exception as e:  # e.g. botocore too old for the parameter
            rows.append((case, f"error {type(e).__name__}", "n/a"))
            return None
        now = body_of(key)
        if st == expect:
            verdict = "honoured"
        elif st in also_ok:
            verdict = f"refused (AWS gives {expect})"
        elif expect == 412 and st == 200:
            verdict = "IGNORED (write went through)"
        elif expect == 200 and st == 412:
            verdict = "WRONGLY REFUSED"
        else:
            verdict = "unexpected"
        if st is not None and 200 <= st < 300 and now != new_body:
            verdict += "; but object not written!"
        if st is not None and st >= 400 and now != before:
            verdict += "; but object changed!"
        label = f"{st}" + (f" {code}" if code else "")
        rows.append((case, label, verdict))
        return resp

    s3.put_object(Bucket=bucket, Key="cond", Body=b"version-1")
    # (a) If-None-Match: *
    row("if-none-match:* on existing key", 412,
        lambda: s3.put_object(Bucket=bucket, Key="cond", Body=b"clobber",
                              IfNoneMatch="*"), "cond", b"clobber")
    s3.delete_object(Bucket=bucket, Key="cond-new")
    row("if-none-match:* on new key", 200,
        lambda: s3.put_object(Bucket=bucket, Key="cond-new", Body=b"fresh",
                              IfNoneMatch="*"), "cond-new", b"fresh")

    # (b) If-Match: etag.  HEAD returns the ETag quoted ("abc..."), which is
    # what S3 clients send back; try the unquoted form as well because some
    # servers compare the raw header against their stored, unquoted ETag.
    stale_hex = hashlib.md5(b"something else").hexdigest()
    for quoted in (True, False):
        form = "quoted" if quoted else "unquoted"
        cur = s3.head_object(Bucket=bucket, Key="cond")["ETag"]
        if not quoted:
            cur = cur.strip('"')
        stale = f'"{stale_hex}"' if quoted else stale_hex
        new_body = b"version-" + form.encode()
        row(f"if-match:<current etag, {form}>", 200,
            lambda: s3.put_object(Bucket=bucket, Key="cond", Body=new_body,
                                  IfMatch=cur), "cond", new_body)
        row(f"if-match:<stale etag, {form}>", 412,
            lambda: s3.put_object(Bucket=bucket, Key="cond", Body=b"clobber",
                                  IfMatch=stale), "cond", b"clobber")
    # AWS answers 404 NoSuchKey here; 412 is an equally safe refusal.
    row("if-match:<etag> on missing key", 404,
        lambda: s3.put_object(Bucket=bucket, Key="cond-missing", Body=b"zz",
                              IfMatch=f'"{stale_hex}"'), "cond-missing", b"zz",
        also_ok=(412,))

    # (c) If-None-Match: * on CompleteMultipartUpload over an existing key
    def mpu_inm():
        mpu = s3.create_multipart_upload(Bucket=bucket, Key="cond")
        uid = mpu["UploadId"]
        r = s3.upload_part(Bucket=bucket, Key="cond", UploadId=uid, PartNumber=1,
                           Body=b"mpu-clobber")
        try:
            return s3.complete_multipart_upload(
                Bucket=bucket, Key="cond", UploadId=uid, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]})
        except ClientError:
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key="cond", UploadId=uid)
            except ClientError:
                pass
            raise

    row("if-none-match:* on complete-mpu (existing)", 412, mpu_inm, "cond",
        b"mpu-clobber")

    print()
    w = max(len(r[0]) for r in rows)
    print(f"{'conditional put case'.ljust(w)}  status                    verdict")
    for case, st, verdict in rows:
        print(f"{case.ljust(w)}  {st.ljust(24)}  {verdict}")
    print()

    # ------------------------------------------------------------ cleanup
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
    for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    step("delete bucket", lambda: s3.delete_bucket(Bucket=bucket))
    for q in quirks:
        print(f"quirk: {q}")
    print("all basic operations passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
