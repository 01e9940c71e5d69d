#!/usr/bin/env python3
"""Load generator for scripts/load.sh: N client threads against one govcfs server for T seconds.

Each client loops over a mix: 70% ranged reads (64 KiB at a random offset of a shared blob,
checked against the known bytes), 20% a small upload plus a commit to its own path, 10% a
commit with a stale `expect` on a shared path (a 409 is the expected answer). Prints one
Markdown table (requests/s, p50/p99 latency per kind, answers by status) and exits non-zero
if any answer was unexpected.
"""
import hashlib, http.client, json, os, random, sys, threading, time

addr, clients, seconds, blob_hash, blob_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = addr.split(":")
blob = open(blob_path, "rb").read()
lock = threading.Lock()
lat = {"read": [], "upload+commit": [], "conflicting commit": []}
answers = {}
unexpected = []
deadline = time.monotonic() + seconds

def note(kind, status, ok, took):
    with lock:
        lat[kind].append(took)
        answers[(kind, status)] = answers.get((kind, status), 0) + 1
        if not ok:
            unexpected.append((kind, status))

def client(n):
    rng = random.Random(n)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    api = "/api/v1/repos/default"
    while time.monotonic() < deadline:
        r = rng.random()
        t0 = time.monotonic()
        try:
            if r < 0.7:
                off = rng.randrange(0, len(blob) - 65536)
                conn.request("GET", f"{api}/blobs/{blob_hash}", headers={"Range": f"bytes={off}-{off + 65535}"})
                resp = conn.getresponse(); body = resp.read()
                note("read", resp.status, resp.status == 206 and body == blob[off:off + 65536], time.monotonic() - t0)
            elif r < 0.9:
                data = os.urandom(16384)
                conn.request("POST", f"{api}/stream/blob/upload", body=data, headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse(); stored = json.loads(resp.read())
                ok = resp.status == 201
                if ok:
                    change = {"op": "put", "path": f"load/c{n}/f{rng.randrange(50)}", "hash": stored["hash"]}
                    conn.request("POST", f"{api}/commits", body=json.dumps({"message": "load", "changes": [change]}), headers={"Content-Type": "application/json"})
                    resp = conn.getresponse(); resp.read()
                    ok = resp.status == 201
                note("upload+commit", resp.status, ok, time.monotonic() - t0)
            else:
                change = {"op": "put", "path": "load/shared", "hash": blob_hash, "expect": "0" * 64}
                conn.request("POST", f"{api}/commits", body=json.dumps({"message": "stale", "changes": [change]}), headers={"Content-Type": "application/json"})
                resp = conn.getresponse(); resp.read()
                note("conflicting commit", resp.status, resp.status == 409, time.monotonic() - t0)
        except Exception as e:  # a dropped connection is an unexpected answer
            note("read" if r < 0.7 else "upload+commit" if r < 0.9 else "conflicting commit", f"error: {type(e).__name__}", False, time.monotonic() - t0)
            conn.close(); conn = http.client.HTTPConnection(host, int(port), timeout=60)

started = time.monotonic()
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join(seconds + 120)
elapsed = time.monotonic() - started

def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p))] * 1000 if v else float("nan")

total = sum(len(v) for v in lat.values())
print(f"\n{clients} clients for {elapsed:.0f} s: {total} requests, {total / elapsed:.0f} operations/s\n")
print("| kind | count | per s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
for kind, v in lat.items():
    print(f"| {kind} | {len(v)} | {len(v) / elapsed:.0f} | {pct(v, 0.5):.1f} | {pct(v, 0.99):.1f} |")
print("\nanswers: " + ", ".join(f"{k} {s}: {c}" for (k, s), c in sorted(answers.items(), key=str)))
print(f"unexpected answers: {len(unexpected)}")
sys.exit(1 if unexpected else 0)
