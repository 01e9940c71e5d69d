#!/usr/bin/env python3
"""Helper for scripts/bench.sh (Python standard library only).

Subcommands:
  gen-random FILE SIZE SEED          random-looking, deterministic, incompressible bytes
  gen-text FILE SIZE PATTERN         base64 text lines; prints how many lines contain PATTERN
  gen-small DIR COUNT MIN MAX        COUNT small files of MIN..MAX bytes
  perturb FILE TAG                   rewrites 8 bytes in every MiB so the blob id changes
  upload-tree URL REPO DIR PREFIX    one raw POST per file (keep-alive), then one commit
  seek FILE SIZE SEED JUMPS LEN      seek pattern through a file: prints "SECONDS DIGEST"
  seek-http URL SIZE SEED JUMPS LEN  the same pattern as Range GETs over one connection
  wrk-lua OUT SIZE PATH SEED         wrk script sending random 4 KiB Range GETs
  wrk-parse FILE                     prints "REQ_PER_S P99_MS" from `wrk --latency` output
  fio-parse FILE                     prints "IOPS P99_MS" from fio JSON output
  free-port                          an unused loopback TCP port
  vmhwm PID                          peak RSS in KiB (VmHWM)
  report TSV META OUT_JSON           Markdown tables on stdout, JSON to OUT_JSON
"""

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import statistics
import sys
import time
import urllib.parse

MIB = 1 << 20


def gen_random(path, size, seed):
    rng = random.Random(int(seed))
    pool = rng.randbytes(64 * MIB)
    size = int(size)
    with open(path, "wb") as f:
        written, block = 0, 0
        while written < size:
            # each MiB is a distinct slice of the pool with its index in front: no two MiB
            # blocks are equal, so no cache, dedup or compressor can shortcut the reads
            off = rng.randrange(0, len(pool) - MIB)
            n = min(MIB, size - written)
            data = block.to_bytes(8, "little") + pool[off + 8 : off + MIB]
            f.write(data[:n])
            written += n
            block += 1


def gen_text(path, size, pattern):
    """Lines of 63 base64 characters and a newline; every 997th line carries PATTERN.
    PATTERN must contain a character outside the base64 alphabet (like '-'), so it never
    appears by chance."""
    size = int(size)
    rng = random.Random(7)
    pool = base64.b64encode(rng.randbytes(48 * MIB))  # 64 MiB of base64 text
    needle = pattern.encode()
    line_len = 64
    count, line_no, written = 0, 0, 0
    with open(path, "wb") as f:
        while written < size:
            lines = []
            block = min(MIB, size - written) // line_len
            if block == 0:
                break
            base = rng.randrange(0, len(pool) - block * 63)
            for i in range(block):
                s = pool[base + i * 63 : base + i * 63 + 63]
                if line_no % 997 == 0:
                    s = needle + s[len(needle) :]
                    count += 1
                lines.append(s)
                line_no += 1
            data = b"\n".join(lines) + b"\n"
            f.write(data)
            written += len(data)
    print(count)


def gen_small(directory, count, lo, hi):
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(11)
    for i in range(int(count)):
        n = rng.randint(int(lo), int(hi))
        with open(os.path.join(directory, f"f{i:05d}.txt"), "wb") as f:
            f.write((f"file {i} " * (n // 8 + 1)).encode()[:n])


def perturb(path, tag):
    tag = int(tag).to_bytes(8, "little")
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        for off in range(0, size - 8, MIB):
            os.pwrite(fd, tag, off + MIB // 2 if off + MIB // 2 + 8 <= size else off)
    finally:
        os.close(fd)


def _conn(url):
    u = urllib.parse.urlsplit(url)
    return u, http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def upload_tree(url, repo, directory, prefix, threads=4):
    """Uploads every file of DIRECTORY as a blob (raw POSTs, THREADS keep-alive connections),
    then commits them all under PREFIX in one commit."""
    import concurrent.futures
    import threading
    local = threading.local()

    def one(name):
        if not hasattr(local, "conn"):
            local.conn = _conn(url)[1]
        with open(os.path.join(directory, name), "rb") as f:
            body = f.read()
        local.conn.request("POST", f"/api/v1/repos/{repo}/stream/blob/upload", body=body,
                           headers={"Content-Type": "application/octet-stream"})
        r = local.conn.getresponse()
        answer = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"upload of {name}: HTTP {r.status} {answer[:200]!r}")
        return {"op": "put", "path": f"{prefix}/{name}", "hash": json.loads(answer)["hash"]}

    names = sorted(os.listdir(directory))
    with concurrent.futures.ThreadPoolExecutor(int(threads)) as pool:
        changes = list(pool.map(one, names))
    u, conn = _conn(url)
    body = json.dumps({"message": f"bench: {len(changes)} files in {prefix}", "changes": changes})
    conn.request("POST", f"/api/v1/repos/{repo}/commits", body=body,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    answer = r.read()
    if r.status not in (200, 201):
        sys.exit(f"commit: HTTP {r.status} {answer[:300]!r}")
    print(len(changes))


def _offsets(size, seed, jumps, length):
    rng = random.Random(int(seed))
    return [rng.randrange(0, max(1, int(size) - int(length))) for _ in range(int(jumps))]


def seek(path, size, seed, jumps, length):
    length = int(length)
    h = hashlib.sha256()
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        for off in _offsets(size, seed, jumps, length):
            f.seek(off)
            got = 0
            while got < length:
                b = f.read(min(length - got, MIB))
                if not b:
                    break
                h.update(b)
                got += len(b)
    print(f"{time.monotonic() - t0:.6f} {h.hexdigest()[:16]}")


def seek_http(url, size, seed, jumps, length):
    length = int(length)
    h = hashlib.sha256()
    u, conn = _conn(url)
    t0 = time.monotonic()
    for off in _offsets(size, seed, jumps, length):
        conn.request("GET", u.path, headers={"Range": f"bytes={off}-{off + length - 1}"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 206:
            sys.exit(f"HTTP {r.status}")
        h.update(data)
    print(f"{time.monotonic() - t0:.6f} {h.hexdigest()[:16]}")


def wrk_lua(out, size, path, seed):
    blocks = int(size) // 4096
    with open(out, "w") as f:
        f.write(f"""math.randomseed({int(seed)})
local blocks = {blocks}
request = function()
  local off = math.random(0, blocks - 1) * 4096
  return wrk.format("GET", "{path}", {{["Range"] = "bytes=" .. off .. "-" .. (off + 4095)}})
end
response = function(status, headers, body)
  if status ~= 206 then error("status " .. status) end
end
""")


def _ms(text):
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
    for u in ("us", "ms", "s", "m"):
        if text.endswith(u):
            return float(text[: -len(u)]) * units[u]
    return float(text)


def wrk_parse(path):
    rps, p99 = None, None
    for line in open(path):
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif len(parts) == 2 and parts[0] == "99%":
            p99 = _ms(parts[1])
    if rps is None:
        sys.exit("no Requests/sec in wrk output")
    print(f"{rps:.1f} {p99 if p99 is not None else 'na'}")


def fio_parse(path):
    text = open(path).read()
    data = json.loads(text[text.index("{"):])
    read = data["jobs"][0]["read"]
    pct = read.get("clat_ns", {}).get("percentile", {})
    p99 = pct.get("99.000000")
    if read.get("io_bytes", 0) == 0:
        sys.exit("fio read nothing")
    print(f"{read['iops']:.1f} {p99 / 1e6 if p99 is not None else 'na'}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def vmhwm(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                print(line.split()[1])
                return
    except OSError:
        pass
    print("")


# ---------------------------------------------------------------------------- report

READ_TOOLS = ["govcfs", "rclone", "rclone-tuned", "httpdirfs-cache", "httpdirfs", "curl", "nginx"]
PEERS = ["rclone", "rclone-tuned", "httpdirfs-cache", "httpdirfs"]
WRITE_TOOLS = ["govcfs", "put", "curl"]

# id, label, unit, better ("higher" | "lower"), what the curl / nginx columns measure
READ_ROWS = [
    ("seq", "1. cat {f1} > /dev/null", "MB/s", "higher", "curl -o /dev/null"),
    ("ttfb", "2. head -c 1 of {f4} (time to first byte)", "ms", "lower", "curl -r 0-0"),
    ("ttfb_bytes", "2. head -c 1 of {f4}: blob bytes server sent", "KiB", "lower", "curl -r 0-0"),
    ("tail", "2. tail -c 65536 of {f4}", "ms", "lower", "curl -r (last 64 KiB)"),
    ("tail_bytes", "2. tail -c 65536 of {f4}: blob bytes server sent", "KiB", "lower", "curl -r"),
    ("grep", "3. grep -c over {ft} text", "s", "lower", "curl | grep -c"),
    ("iops", "4. fio randread 4 KiB on {f1}: IOPS", "IOPS", "higher", "wrk, 1 conn: req/s"),
    ("p99", "4. fio randread 4 KiB: p99 clat", "ms", "lower", "wrk, 1 conn: p99"),
    ("seek", "5. seek pattern: 20 x 2 MiB at random offsets of {f4}", "s", "lower", "Range GETs, 1 conn"),
    ("ls_cold", "6. ls -l of {n} files, cold (fresh mount)", "s", "lower", "GET of the HTML index"),
    ("ls_warm", "6. ls -l of {n} files, warm (right after)", "s", "lower", "GET of the HTML index"),
    ("rss_seq", "7. peak RSS of the mount process, row 1", "MiB", "lower", ""),
    ("rss_iops", "7. peak RSS of the mount process, row 4", "MiB", "lower", ""),
]
WRITE_ROWS = [
    ("w_big", "8. write {fw} (cp into mount / govcfs put / curl -T)", "MB/s", "higher"),
    ("w_small", "8. write {nw} x 4 KiB files (cp -r / put loop / curl --next)", "files/s", "higher"),
]


def _load(tsv):
    """rows[row][tool] = list of (status, value, note)"""
    rows = {}
    for line in open(tsv):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4:
            continue
        row, tool, status, value = parts[:4]
        note = parts[4] if len(parts) > 4 else ""
        try:
            v = float(value)
        except ValueError:
            v = None
        rows.setdefault(row, {}).setdefault(tool, []).append((status, v, note))
    return rows


def _summary(samples, better):
    ok = [v for s, v, _ in samples if s == "ok" and v is not None]
    bounds = [v for s, v, _ in samples if s == "timeout" and v is not None]
    notes = sorted({n for s, _, n in samples if n and s != "ok"})
    if ok and len(ok) >= len(bounds):
        return {"status": "ok", "median": statistics.median(ok), "runs": ok, "notes": notes}
    if bounds:
        # a bound: slower than this (better=higher: at most; better=lower: at least)
        b = min(bounds) if better == "higher" else max(bounds)
        return {"status": "timeout", "bound": b, "runs": ok, "notes": notes}
    return {"status": "na", "runs": [], "notes": notes or ["not measured"]}


def _fmt(x):
    if x is None:
        return ""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cell(s, better):
    if s is None:
        return "—"
    if s["status"] == "ok":
        return _fmt(s["median"])
    if s["status"] == "timeout":
        return ("≤" if better == "higher" else "≥") + _fmt(s["bound"])
    return "n/a"


def _ratio(g, p, better):
    """> 1 means govcfs is better: govcfs/peer for rates, peer/govcfs for times and sizes."""
    if not g or not p or g["status"] != "ok":
        return None
    gv = g["median"]
    if p["status"] == "ok":
        pv = p["median"]
        bound = False
    elif p["status"] == "timeout":
        pv = p["bound"]
        bound = True
    else:
        return None
    if better == "higher":
        r = gv / pv if pv else None
    else:
        r = pv / gv if gv else None
    if r is None:
        return None
    return (r, bound)


def _rfmt(r):
    if r is None:
        return "—"
    v, bound = r
    return ("≥" if bound else "") + f"{v:.2f}×"


def report(tsv, meta_path, out_json):
    meta = json.load(open(meta_path))
    raw = _load(tsv)
    fmt = {k: meta.get("labels", {}).get(k, "") for k in ("f1", "f4", "ft", "n", "fw", "nw")}
    out = {"meta": meta, "rows": {}}
    lines = []
    head = ["row", "unit", "govcfs", "rclone", "rclone tuned", "httpdirfs --cache",
            "httpdirfs", "curl (govcfs serve)", "nginx", "govcfs vs rclone",
            "govcfs vs best peer", "govcfs vs curl"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    footnotes = []
    for rid, label, unit, better, curl_what in READ_ROWS:
        label = label.format(**fmt)
        samples = raw.get(rid, {})
        summ = {t: _summary(samples[t], better) if t in samples else None for t in READ_TOOLS}
        g = summ["govcfs"]
        peer_ratios = [(_ratio(g, summ[p], better), p) for p in PEERS]
        best = None
        for p in PEERS:
            s = summ[p]
            if s and s["status"] == "ok":
                if best is None or (s["median"] > summ[best]["median"]) == (better == "higher"):
                    best = p
        best_r = _ratio(g, summ[best], better) if best else None
        cells = [label, unit] + [_cell(summ[t], better) for t in READ_TOOLS]
        cells += [_rfmt(_ratio(g, summ["rclone"], better)),
                  _rfmt(best_r) + (f" ({best})" if best else ""),
                  _rfmt(_ratio(g, summ["curl"], better))]
        lines.append("| " + " | ".join(cells) + " |")
        out["rows"][rid] = {"label": label, "unit": unit, "better": better,
                            "curl_measures": curl_what,
                            "tools": {t: s for t, s in summ.items() if s is not None},
                            "best_peer": best,
                            "ratio_vs_best_peer": best_r[0] if best_r else None,
                            "ratio_vs_rclone": (_ratio(g, summ["rclone"], better) or [None])[0],
                            "ratio_vs_curl": (_ratio(g, summ["curl"], better) or [None])[0]}
        for t, s in summ.items():
            if s and s["notes"]:
                footnotes.append(f"- {rid} / {t}: " + "; ".join(s["notes"]))
    lines.append("")
    whead = ["row", "unit", "govcfs mount", "govcfs put", "curl (raw upload)",
             "mount vs put", "mount vs curl"]
    lines.append("| " + " | ".join(whead) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(whead) - 2)) + "|")
    for rid, label, unit, better in WRITE_ROWS:
        label = label.format(**fmt)
        samples = raw.get(rid, {})
        summ = {t: _summary(samples[t], better) if t in samples else None for t in WRITE_TOOLS}
        g = summ["govcfs"]
        cells = [label, unit] + [_cell(summ[t], better) for t in WRITE_TOOLS]
        cells += [_rfmt(_ratio(g, summ["put"], better)), _rfmt(_ratio(g, summ["curl"], better))]
        lines.append("| " + " | ".join(cells) + " |")
        out["rows"][rid] = {"label": label, "unit": unit, "better": better,
                            "tools": {t: s for t, s in summ.items() if s is not None},
                            "ratio_vs_put": (_ratio(g, summ["put"], better) or [None])[0],
                            "ratio_vs_curl": (_ratio(g, summ["curl"], better) or [None])[0]}
        for t, s in summ.items():
            if s and s["notes"]:
                footnotes.append(f"- {rid} / {t}: " + "; ".join(s["notes"]))
    print("\n".join(lines))
    print()
    print("Medians of the runs; ratios are normalised so that > 1× means govcfs is better "
          "(govcfs/peer for MB/s, IOPS, files/s; peer/govcfs for s, ms, KiB, MiB). "
          "≤/≥ mark a run stopped at its time limit (a bound, not a measurement). "
          "curl/nginx columns: what the server alone costs, measured as the row's "
          "'curl_measures' in the JSON (wrk for row 4, Range GETs on one connection for row 5, "
          "the HTML index for row 6). rclone tuned: the flags in the JSON, one set for rows 1 and 3 "
          "and one for the others. Peak RSS: VmHWM of a fresh mount process per run, "
          "the largest over the runs of that row.")
    if footnotes:
        print()
        print("Notes:")
        print("\n".join(footnotes))
    for k in ("server_peak_rss_mib", "mount_log_findings"):
        if meta.get(k):
            out[k] = meta[k]
    with open(out_json, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    cmds = {
        "gen-random": gen_random, "gen-text": gen_text, "gen-small": gen_small,
        "perturb": perturb, "upload-tree": upload_tree, "seek": seek, "seek-http": seek_http,
        "wrk-lua": wrk_lua, "wrk-parse": wrk_parse, "fio-parse": fio_parse,
        "free-port": free_port, "vmhwm": vmhwm, "report": report,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
