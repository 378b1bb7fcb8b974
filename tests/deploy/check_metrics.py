#!/usr/bin/python3
"""Checks the Grafana dashboard and the Prometheus rules against the metric contract
(docs/service-contract.md) and, when the server binary exists, against a live
kvtier-server's /metrics.

Static checks (always):
  - deploy/grafana/kvtier.json parses, has unique panel ids, and every query is valid
    PromQL (promtool checks it as a recording rule) using only contract metrics;
  - every metric the rules use is a contract metric (plus Prometheus' own `up`);
  - every alert has a promtool unit test that fires it, every recording rule one that
    evaluates it.
Live checks (with --server BIN when BIN exists):
  - kvtier-server starts on free loopback ports with a temp data dir and the flag file the
    Helm chart renders (so every chart flag is one the server accepts), /healthz says ok
    and /readyz says ready;
  - after real traffic over gRPC (Lookup, Put of valid payloads twice, Get, a rejected
    Put), /metrics exports every metric the dashboard and the rules use, with the
    contract's type and labels (histograms as _bucket/_sum/_count);
  - SIGTERM makes it exit 0 within its drain timeout;
  - a second server runs the chart's TLS + token configuration (its flag file, and the
    token file and certificate from the Secrets it renders): no token is
    UNAUTHENTICATED, a token without the namespace PERMISSION_DENIED, the right token
    OK, and a plaintext call fails.

usage: check_metrics.py --contract MD --dashboard JSON --rules-dir DIR --promtool BIN
                        [--server BIN --helmrender BIN --chart DIR --proto-dir DIR]
"""
import argparse
import atexit
import ctypes
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploylib  # noqa: E402

failures = []
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
# Metric names, not recording-rule names (those contain ':').
METRIC_RE = re.compile(r"(?<![\w:])(kvtier_[a-z0-9_]+)(?![\w:])")


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def base_metric(name, contract):
    """kvtier_x_bucket -> kvtier_x when kvtier_x is a contract histogram."""
    for suffix in HIST_SUFFIXES:
        if name.endswith(suffix) and contract.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


def metrics_in(expr, contract, where):
    used = set()
    for name in METRIC_RE.findall(expr):
        base = base_metric(name, contract)
        check(base in contract, f"{where}: {name} is not a metric of the service contract")
        if contract.get(base) == "histogram":
            check(name != base, f"{where}: histogram {name} used without _bucket/_sum/_count")
        used.add(name)
    return used


def dashboard_exprs(path):
    dash = json.load(open(path))
    check(dash.get("uid") and dash.get("title"), "dashboard: no uid/title")
    ids = set()
    exprs = []
    for p in dash["panels"]:
        check(p["id"] not in ids, f"dashboard: duplicate panel id {p['id']}")
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        check(p.get("targets"), f"dashboard: panel {p['title']!r} has no query")
        check(p["datasource"]["uid"] == "${datasource}", f"dashboard: panel {p['title']!r} datasource")
        for t in p.get("targets", []):
            exprs.append((f"dashboard panel {p['title']!r}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append((f"dashboard variable {v['name']}", v["definition"]))
    return exprs


def promql_valid(exprs, promtool):
    """Checks PromQL syntax with promtool: each expression becomes a recording rule."""
    rules = []
    for i, (where, expr) in enumerate(exprs):
        m = re.fullmatch(r"label_values\((.*), *[a-z_]+\)", expr)
        if m:
            expr = m.group(1)
        expr = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                .replace("$job", ".*").replace("$instance", ".*").replace("$namespace", ".*"))
        rules.append({"record": f"dashboard:check_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        p = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        check(p.returncode == 0, f"dashboard: invalid PromQL:\n{p.stdout}{p.stderr}")


def check_rules(rules_dir, contract):
    used = set()
    alerts, records = set(), set()
    for path in sorted(glob.glob(os.path.join(rules_dir, "*.yaml"))):
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                where = f"{os.path.basename(path)}: {rule.get('alert') or rule.get('record')}"
                used |= metrics_in(rule["expr"], contract, where)
                if "alert" in rule:
                    alerts.add(rule["alert"])
                    check(rule["labels"].get("severity") in ("warning", "critical"), f"{where}: severity")
                    check(rule["annotations"].get("summary") and rule["annotations"].get("description"),
                          f"{where}: summary and description annotations")
                else:
                    records.add(rule["record"])
                    check(re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]),
                          f"{where}: recording rule name is not level:metric:operations")
    fired, quiet, evaluated = set(), set(), set()
    for path in sorted(glob.glob(os.path.join(rules_dir, "tests", "*.yaml"))):
        for test in yaml.safe_load(open(path))["tests"]:
            for t in test.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
            for t in test.get("promql_expr_test", []):
                evaluated.add(t["expr"].strip())
    check(alerts and records, f"{rules_dir}: no alerts or no recording rules")
    check(not alerts - fired, f"alerts without a firing unit test: {sorted(alerts - fired)}")
    check(not alerts - quiet, f"alerts without a quiet unit test: {sorted(alerts - quiet)}")
    check(not records - evaluated, f"recording rules without a unit test: {sorted(records - evaluated)}")
    return used


# ---------------------------------------------------------------- live server
def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def chart_flagfile(helmrender, chart, tmp):
    """The flag file the Helm chart renders for its default values."""
    out = subprocess.run([helmrender, "--strict", chart], capture_output=True, text=True, check=True).stdout
    for doc in yaml.safe_load_all(out):
        if doc and doc["kind"] == "ConfigMap":
            path = os.path.join(tmp, "chart.flags")
            open(path, "w").write(doc["data"]["kvtier.flags"])
            return path, deploylib.parse_flagfile(doc["data"]["kvtier.flags"])
    raise AssertionError("chart renders no ConfigMap")


_xxh = None


def xxh3(data):
    global _xxh
    if _xxh is None:
        _xxh = ctypes.CDLL("libxxhash.so.0")
        _xxh.XXH3_64bits.restype = ctypes.c_uint64
        _xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return _xxh.XXH3_64bits(data, len(data))


def fp16_payload(rng, layers=2, heads=1, head_dim=64, tokens=128):
    """A valid block payload (kernels/payload.h): preset k4v2_g128, FP16 encoding."""
    section = heads * 2 * tokens * head_dim * 2
    body = bytes(rng.getrandbits(8) for _ in range(section * layers))
    head = struct.pack("<IHHBBBBHHHHIIQQQ", 0x4254564B, 1, 64, 1, 1, 0, 0, head_dim, 128,
                       layers, heads, tokens, 0, section, section * layers, xxh3(body))
    return head + struct.pack("<Q", xxh3(head)) + b"\0" * 4 + body


_stubs = None


def stubs(proto_dir):
    """Python gRPC stubs of proto/kvtier/v1/kvtier.proto, generated with protoc."""
    global _stubs
    if _stubs is None:
        out = tempfile.mkdtemp(prefix="kvtier-stubs-")
        atexit.register(shutil.rmtree, out, True)
        subprocess.run(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                        "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                        os.path.join(proto_dir, "kvtier/v1/kvtier.proto")], check=True)
        sys.path.insert(0, out)
        from kvtier.v1 import kvtier_pb2 as pb, kvtier_pb2_grpc as pbg  # noqa: E402
        _stubs = (pb, pbg)
    return _stubs


def traffic(grpc_port, proto_dir, tmp):
    """Real requests over gRPC, so that labeled series exist."""
    import grpc  # noqa: E402
    pb, pbg = stubs(proto_dir)

    rng = random.Random(7)
    ns = "deploycheck/model-a/k4v2_g128"
    hashes = [rng.getrandbits(256).to_bytes(32, "little") for _ in range(3)]
    payloads = [fp16_payload(rng) for _ in range(2)]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        stub = pbg.KvTierStub(ch)
        r = stub.Lookup(pb.LookupRequest(namespace=ns, part=0, chain_hashes=hashes, block_tokens=128), timeout=10)
        check(r.num_present == 0, f"live: fresh server has {r.num_present} blocks")

        def put_stream(blocks):
            for h, p in blocks:
                yield pb.PutRequest(header=pb.PutBlockHeader(
                    key=pb.BlockKey(namespace=ns, chain_hash=h, part=0), payload_bytes=len(p)))
                for i in range(0, len(p), 40000):
                    yield pb.PutRequest(chunk=p[i:i + 40000])
        blocks = list(zip(hashes, payloads))
        r = stub.Put(put_stream(blocks), timeout=10)
        check(list(r.outcomes) == [pb.PutResponse.STORED] * 2, f"live: first Put outcomes {list(r.outcomes)}")
        r = stub.Put(put_stream(blocks), timeout=10)
        check(list(r.outcomes) == [pb.PutResponse.DEDUPLICATED] * 2, f"live: second Put outcomes {list(r.outcomes)}")
        r = stub.Lookup(pb.LookupRequest(namespace=ns, part=0, chain_hashes=hashes, block_tokens=128), timeout=10)
        check(r.num_present == 2, f"live: Lookup after Put found {r.num_present}, want 2")
        got = list(stub.Get(pb.GetRequest(namespace=ns, part=0, chain_hashes=hashes), timeout=10))
        body = b"".join(m.chunk for m in got if m.index == 0 and m.WhichOneof("part") == "chunk")
        check(body == payloads[0], "live: Get returned other bytes than were Put")
        check(any(m.index == 2 and m.WhichOneof("part") == "miss" for m in got), "live: Get of an absent block is no miss")
        bad = bytearray(payloads[1])
        bad[100] ^= 0xFF  # body checksum mismatch
        try:
            stub.Put(put_stream([(rng.getrandbits(256).to_bytes(32, "little"), bytes(bad))]), timeout=10)
            check(False, "live: a corrupt payload was accepted")
        except grpc.RpcError as e:
            check(e.code() in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INVALID_ARGUMENT),
                  f"live: corrupt Put got {e.code()}")


def parse_exposition(text):
    """-> ({name: type}, {sample name: [label dicts]})."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+", line)
            if not check(m, f"live: bad exposition line {line!r}"):
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            samples.setdefault(m.group(1), []).append(labels)
    return types, samples


def contract_labels(path):
    """{metric: set of label names} from the contract's metric table."""
    text = open(path).read()
    labels = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and re.fullmatch(r"`kvtier_[a-z_]+`", cells[1]):
            labels[cells[1].strip("`")] = set(re.findall(r"(?:^|,\s*)([a-z_]+)", cells[3]))
    return labels


class Server:
    """kvtier-server on free loopback ports; stops it with SIGTERM and checks exit 0."""

    def __init__(self, binary, flagfile, tmp):
        # UCX on (one worker on a free port; the chart's flag file asks for more) so that
        # the per-worker metrics are exported too.
        self.grpc_port, self.http_port, ucx_port = free_ports(3)
        self.cmd = [binary, f"--flagfile={flagfile}", f"--listen=127.0.0.1:{self.grpc_port}",
                    f"--ucx_port={ucx_port}", "--ucx_workers=1",
                    f"--http_port={self.http_port}", f"--data_dir={tmp}/rocksdb", "--memory_capacity=64MiB",
                    "--disk_capacity=256MiB", "--drain_timeout=5s"]
        self.log = open(os.path.join(tmp, "server.log"), "w+")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self):
        deadline = time.time() + 30
        status, body = None, ""
        while time.time() < deadline and self.proc.poll() is None:
            status, body = http_get(self.http_port, "/readyz")
            if status == 200:
                break
            time.sleep(0.1)
        ok = check(status == 200, f"live: /readyz not 200 within 30 s (last {status}); "
                                  f"exit={self.proc.poll()}; command: {' '.join(self.cmd)}")
        if ok:
            check(body.strip() == "ready", f"live: /readyz body {body!r}")
        return ok

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
                check(rc == 0, f"live: exit code {rc} after SIGTERM")
            except subprocess.TimeoutExpired:
                self.proc.kill()
                check(False, "live: still running 15 s after SIGTERM (drain timeout 5 s)")
        if failures:
            self.log.seek(0)
            print("server log (tail):\n" + self.log.read()[-3000:])


def live_secure(args):
    """The chart's TLS + token configuration (flags, token file, certificate files from
    its Secrets) accepted and enforced by the real server."""
    import base64
    import grpc  # noqa: E402
    pb, pbg = stubs(args.proto_dir)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        cert, key = open(f"{tmp}/cert.pem").read(), open(f"{tmp}/key.pem").read()
        writer, reader = "w-" + os.urandom(8).hex(), "r-" + os.urandom(8).hex()
        values = os.path.join(tmp, "values.yaml")
        yaml.safe_dump({"tls": {"enabled": True, "cert": cert, "key": key},
                        "auth": {"enabled": True, "tokens": [
                            {"token": writer, "access": "rw", "namespaces": ["deploycheck/"]},
                            {"token": reader, "access": "r", "namespaces": ["other/"]}]}}, open(values, "w"))
        out = subprocess.run([args.helmrender, "--strict", "-f", values, args.chart],
                             capture_output=True, text=True, check=True).stdout
        flags_text = None
        for doc in yaml.safe_load_all(out):
            if doc and doc["kind"] == "ConfigMap":
                flags_text = doc["data"]["kvtier.flags"]
            if doc and doc["kind"] == "Secret":
                sub = "auth" if "tokens" in doc["data"] else "tls"
                os.makedirs(f"{tmp}/{sub}", exist_ok=True)
                for k, v in doc["data"].items():
                    open(f"{tmp}/{sub}/{k}", "wb").write(base64.b64decode(v))
        flags_text = flags_text.replace("/etc/kvtier/auth", f"{tmp}/auth").replace("/etc/kvtier/tls", f"{tmp}/tls")
        open(f"{tmp}/chart.flags", "w").write(flags_text)
        server = Server(args.server, f"{tmp}/chart.flags", tmp)
        try:
            if not server.wait_ready():
                return
            creds = grpc.ssl_channel_credentials(root_certificates=cert.encode())
            req = pb.LookupRequest(namespace="deploycheck/m", part=0, chain_hashes=[os.urandom(32)], block_tokens=128)
            with grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", creds) as ch:
                stub = pbg.KvTierStub(ch)
                for token, want in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                    (reader, grpc.StatusCode.PERMISSION_DENIED), (writer, grpc.StatusCode.OK)):
                    md = [("authorization", f"Bearer {token}")] if token else []
                    try:
                        stub.Lookup(req, metadata=md, timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as e:
                        code = e.code()
                    check(code == want, f"live TLS+tokens: Lookup with token {token and token[:2]} got {code}, want {want}")
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
                try:
                    pbg.KvTierStub(ch).Lookup(req, metadata=[("authorization", f"Bearer {writer}")], timeout=3)
                    check(False, "live TLS+tokens: a plaintext call succeeded")
                except grpc.RpcError as e:
                    check(e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
                          f"live TLS+tokens: plaintext call got {e.code()}")
        finally:
            server.stop()


def live(args, used, contract):
    with tempfile.TemporaryDirectory() as tmp:
        # The chart's default flag file, then what must differ on a CI machine.
        flagfile, _ = chart_flagfile(args.helmrender, args.chart, tmp)
        server = Server(args.server, flagfile, tmp)
        try:
            if not server.wait_ready():
                return
            status, body = http_get(server.http_port, "/healthz")
            check(status == 200 and body.strip() == "ok", f"live: /healthz {status} {body!r}")
            traffic(server.grpc_port, args.proto_dir, tmp)
            status, text = http_get(server.http_port, "/metrics")
            check(status == 200, f"live: /metrics status {status}")
            types, samples = parse_exposition(text)
            labels = contract_labels(args.contract)
            used_bases = {base_metric(u, contract) for u in used}
            for base in sorted(set(contract)):
                needed = base in used_bases
                if not check(base in types, f"live: {base} not exported (no # TYPE line)"
                             + (" - the dashboard or rules query it" if needed else "")):
                    continue
                check(types[base] == contract[base].replace("gauge (1)", "gauge"),
                      f"live: {base} has type {types[base]}, contract says {contract[base]}")
                series = [base + s for s in HIST_SUFFIXES] if types[base] == "histogram" else [base]
                for s in series:
                    if check(samples.get(s), f"live: no samples of {s} after traffic"):
                        want = set(labels.get(base, set())) | ({"le"} if s.endswith("_bucket") else set())
                        for lab in samples[s]:
                            if not check(want <= set(lab), f"live: {s}{lab} lacks labels {want - set(lab)}"):
                                break
            hits = [l for l in samples.get("kvtier_lookup_tokens_total", []) if l.get("result") == "hit"]
            check(hits, "live: no token hit series after a hitting Lookup")
        finally:
            server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contract", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--rules-dir", required=True)
    ap.add_argument("--promtool", required=True)
    ap.add_argument("--server")
    ap.add_argument("--helmrender")
    ap.add_argument("--chart")
    ap.add_argument("--proto-dir")
    args = ap.parse_args()

    contract = deploylib.contract_metrics(args.contract)
    exprs = dashboard_exprs(args.dashboard)
    used = set()
    for where, expr in exprs:
        used |= metrics_in(expr, contract, where)
    promql_valid(exprs, args.promtool)
    used |= check_rules(args.rules_dir, contract)
    print(f"static: {len(exprs)} dashboard queries and the rules use {len(used)} metric names, all in the contract"
          if not failures else "static: FAILED")

    if args.server and os.path.exists(args.server):
        if not (args.helmrender and os.path.exists(args.helmrender)):
            check(False, "live: --helmrender missing (needed for the chart's flag file)")
        else:
            live(args, used, contract)
            if not failures:
                print(f"live: {args.server} exports every metric the dashboard and rules use")
            live_secure(args)
            if not failures:
                print("live: the chart's TLS + token configuration works with the server")
    else:
        print(f"live: SKIPPED - no server binary at {args.server} (build target kvtier-server to run it)")

    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
