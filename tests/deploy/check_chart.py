#!/usr/bin/python3
"""Renders deploy/helm/kvtier with helmrender (a `helm template` stand-in) for the default
values and several overrides, and checks the objects: they parse as YAML, the expected
kinds exist, selectors match the pods, container ports match the server flags in the
flag file the container reads, probes hit /healthz and /readyz on the http port, the
grace period exceeds the drain time, secrets and volumes line up, and the pods run as
non-root. Also checks that every value in values.yaml is documented and used, and that
bad values make the render fail with a clear message.

usage: check_chart.py HELMRENDER CHART_DIR SERVICE_CONTRACT_MD
"""
import base64
import os
import re
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploylib  # noqa: E402

RENDERER, CHART, CONTRACT = sys.argv[1:4]
CONTRACT_FLAGS = deploylib.contract_flags(CONTRACT)
TOKEN_LINE = re.compile(r"^(\S+) (r|w|rw) ([^\s,]+(,[^\s,]+)*)$")  # contract's token file
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def render(args, release="kvtier", namespace="kv", expect_ok=True):
    with tempfile.NamedTemporaryFile(suffix=".txt") as notes:
        cmd = [RENDERER, "--strict", "--name", release, "--namespace", namespace,
               "--notes", notes.name] + args + [CHART]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if not expect_ok:
            return p
        if p.returncode != 0:
            raise AssertionError(f"render {args} failed: {p.stderr}")
        return p.stdout, open(notes.name).read()


def subset(small, big):
    return all(big.get(k) == v for k, v in small.items())


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def check_render(case, args, expect):
    """Renders one case and checks everything that must hold for any values."""
    out, notes = render(args, release=expect.get("release", "kvtier"))
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    ns = "kv"
    kinds = sorted(d["kind"] for d in docs)
    check(kinds == sorted(expect["kinds"]), f"{case}: kinds {kinds} != {sorted(expect['kinds'])}")
    for d in docs:
        name = d["metadata"]["name"]
        check(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63,
              f"{case}: bad object name {name!r}")
        check(d["metadata"].get("namespace") == ns, f"{case}: {d['kind']}/{name} not in {ns}")
        check(d["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "Helm",
              f"{case}: {d['kind']}/{name} lacks the standard labels")

    (sts,) = by_kind(docs, "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    check(spec["replicas"] == expect["replicas"], f"{case}: replicas {spec['replicas']}")
    check(subset(spec["selector"]["matchLabels"], pod_labels), f"{case}: selector misses pods")
    (ctr,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    check(all(p["protocol"] == "TCP" for p in ctr["ports"]), f"{case}: non-TCP port")

    # The flag file: ConfigMap -> volume -> mount -> --flagfile.
    (cm,) = by_kind(docs, "ConfigMap")
    (flagfile_arg,) = [a for a in ctr["args"] if a.startswith("--flagfile=")]
    flagfile = flagfile_arg.split("=", 1)[1]
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = mounts[os.path.dirname(flagfile)]
    check(volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"],
          f"{case}: --flagfile not from the chart's ConfigMap")
    flags = deploylib.parse_flagfile(cm["data"][os.path.basename(flagfile)])
    unknown = set(flags) - CONTRACT_FLAGS
    check(not unknown, f"{case}: flags not in the service contract: {unknown}")
    for k, v in expect.get("flags", {}).items():
        check(flags.get(k) == v, f"{case}: flag {k}={flags.get(k)!r}, want {v!r}")

    # Ports follow the flags.
    grpc_port = int(flags["--listen"].rsplit(":", 1)[1])
    ucx_port = int(flags["--ucx_port"])
    http_port = int(flags["--http_port"])
    ucx_workers = int(flags["--ucx_workers"])
    want_ports = {"grpc": grpc_port, "http": http_port}
    if ucx_port:  # one listener per UCX worker: ucx, ucx-1, ... on consecutive ports
        for i in range(ucx_workers):
            want_ports["ucx" if i == 0 else f"ucx-{i}"] = ucx_port + i
    check(ports == want_ports, f"{case}: container ports {ports} != flags {want_ports}")

    # Probes: /healthz and /readyz on the http port.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = ctr[probe]["httpGet"]
        check(get["path"] == path, f"{case}: {probe} path {get['path']}")
        check(ports.get(get["port"], get["port"]) == http_port,
              f"{case}: {probe} not on the http port")

    # Graceful termination: preStop sleep + drain < grace period.
    drain = deploylib.parse_seconds(flags["--drain_timeout"])
    pre_stop = 0
    if "lifecycle" in ctr:
        cmd = ctr["lifecycle"]["preStop"]["exec"]["command"]
        check(cmd[0] == "sleep", f"{case}: preStop is not a sleep")
        pre_stop = int(cmd[1])
    grace = pod["terminationGracePeriodSeconds"]
    check(grace > drain + pre_stop, f"{case}: grace {grace} <= drain {drain} + preStop {pre_stop}")

    # Non-root, no privilege escalation, read-only root file system.
    psc, csc = pod["securityContext"], ctr["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"{case}: pod may run as root")
    check(csc.get("allowPrivilegeEscalation") is False, f"{case}: privilege escalation allowed")
    check(csc.get("readOnlyRootFilesystem") is True, f"{case}: writable root file system")
    check(csc["capabilities"]["drop"] == ["ALL"], f"{case}: capabilities not dropped")

    # Data directory on the per-pod volume (PVC template) or an emptyDir.
    data_dir = flags["--data_dir"]
    data_mount = [m for p, m in mounts.items() if data_dir.startswith(p + "/")]
    check(len(data_mount) == 1, f"{case}: --data_dir {data_dir} is not on a mounted volume")
    claims = {c["metadata"]["name"]: c for c in spec.get("volumeClaimTemplates", [])}
    if expect.get("persistence", True):
        claim = claims.get(data_mount[0]["name"])
        check(claim is not None and data_mount[0]["name"] not in volumes,
              f"{case}: data dir not on a volumeClaimTemplate")
        if claim:
            size = deploylib.parse_bytes(claim["spec"]["resources"]["requests"]["storage"])
            check(size > deploylib.parse_bytes(flags["--disk_capacity"]),
                  f"{case}: PVC {size} B not above --disk_capacity")
            check(claim["spec"]["accessModes"] == ["ReadWriteOnce"], f"{case}: PVC access modes")
    else:
        check(not claims, f"{case}: volumeClaimTemplates with persistence off")
        check("emptyDir" in volumes.get(data_mount[0]["name"], {}), f"{case}: data dir not an emptyDir")
    for m in ctr["volumeMounts"]:
        check(m["name"] in volumes or m["name"] in claims, f"{case}: mount {m['name']} has no volume")

    # Memory: the limit must hold the RAM tier.
    limit = deploylib.parse_bytes(ctr["resources"]["limits"]["memory"])
    check(limit > deploylib.parse_bytes(flags["--memory_capacity"]),
          f"{case}: memory limit {limit} B not above --memory_capacity")
    check("requests" in ctr["resources"], f"{case}: no resource requests")
    annotations = spec["template"]["metadata"]["annotations"]
    check(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")),
          f"{case}: no checksum/config annotation")

    # Secrets: each secret-backed file the flags name is mounted from a Secret with that key.
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    for flag in ("--token_file", "--tls_cert", "--tls_key", "--tls_client_ca"):
        if not flags.get(flag):
            continue
        path = flags[flag]
        m = mounts.get(os.path.dirname(path))
        if not check(m is not None, f"{case}: {flag} {path} not on a mount"):
            continue
        vol = volumes[m["name"]]["secret"]
        if not vol.get("defaultMode", 0o644) & 0o004:  # not world-readable: needs the group
            check(psc.get("fsGroup") not in (None, 0), f"{case}: {flag} unreadable for a non-root user without fsGroup")
        items = {i["path"]: i["key"] for i in vol["items"]}
        key = items.get(os.path.basename(path))
        check(key is not None, f"{case}: {flag}: no secret item for {path}")
        existing = expect.get("existing_secrets", set())
        if vol["secretName"] in existing:
            check(vol["secretName"] not in secrets, f"{case}: existingSecret also rendered")
        elif check(vol["secretName"] in secrets, f"{case}: secret {vol['secretName']} not rendered"):
            check(key in secrets[vol["secretName"]]["data"], f"{case}: secret lacks {key}")
    for s in secrets.values():
        for key, b64 in s["data"].items():
            raw = base64.b64decode(b64, validate=True).decode()
            if key == "tokens":
                lines = [l for l in raw.splitlines() if l and not l.startswith("#")]
                check(lines and all(TOKEN_LINE.match(l) for l in lines),
                      f"{case}: token file not in the contract's format: {raw!r}")
                if "tokens" in expect:
                    check(lines == expect["tokens"], f"{case}: token lines {lines}")
            else:
                check(raw.startswith("-----BEGIN "), f"{case}: {key} is not PEM")

    # Services: headless (per-pod DNS, ready pods only) and the client Service.
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    headless = services.get(spec["serviceName"])
    if check(headless is not None, f"{case}: serviceName {spec['serviceName']} not rendered"):
        check(headless["spec"]["clusterIP"] == "None", f"{case}: headless Service has a cluster IP")
        check(headless["spec"]["publishNotReadyAddresses"] is False,
              f"{case}: headless Service publishes not-ready pods")
        hports = {p["name"]: p["port"] for p in headless["spec"]["ports"]}
        check(hports == want_ports, f"{case}: headless ports {hports} != {want_ports}")
    for s in services.values():
        check(subset(s["spec"]["selector"], pod_labels), f"{case}: Service {s['metadata']['name']} selects no pod")
        for p in s["spec"]["ports"]:
            check(ports.get(p["targetPort"]) == p["port"],
                  f"{case}: Service port {p['name']} -> {p['targetPort']} mismatch")
    check(len(services) == 2, f"{case}: want headless + client Service, got {list(services)}")

    for pdb in by_kind(docs, "PodDisruptionBudget"):
        check(subset(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{case}: PDB selects no pod")
        check(pdb["spec"]["maxUnavailable"] >= 1, f"{case}: PDB blocks every drain")
    for np in by_kind(docs, "NetworkPolicy"):
        check(subset(np["spec"]["podSelector"]["matchLabels"], pod_labels), f"{case}: NetworkPolicy selects no pod")
        named = [p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]
                 if isinstance(p["port"], str)]
        want_named = {n for n in want_ports if n in ("grpc", "http", "ucx")}
        check(set(named) == want_named, f"{case}: NetworkPolicy ports {named} != {want_named}")
        ranges = [(p["port"], p["endPort"]) for rule in np["spec"]["ingress"] for p in rule["ports"]
                  if "endPort" in p]
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        want_ranges = []
        if ucx_port and ucx_workers > 1:  # the other workers' listeners
            want_ranges.append((ucx_port + 1, ucx_port + ucx_workers - 1))
        if ucx_port and env.get("UCX_TCP_PORT_RANGE"):
            want_ranges.append(tuple(map(int, env["UCX_TCP_PORT_RANGE"].split("-"))))
        check(ranges == want_ranges,
              f"{case}: NetworkPolicy port ranges {ranges}, want {want_ranges} (UCX workers, "
              "UCX_TCP_PORT_RANGE)")
    for sm in by_kind(docs, "ServiceMonitor"):
        (ep,) = sm["spec"]["endpoints"]
        check(ep["port"] == "http" and ep["path"] == "/metrics", f"{case}: ServiceMonitor endpoint {ep}")
        check(ep.get("honorLabels") is True, f"{case}: ServiceMonitor without honorLabels")
        matched = [n for n, s in services.items()
                   if subset(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        check(matched == [spec["serviceName"]], f"{case}: ServiceMonitor selects {matched}, want the headless Service only")
        check(sm["spec"]["jobLabel"] in headless["metadata"]["labels"], f"{case}: jobLabel not on the Service")
        check(headless["metadata"]["labels"][sm["spec"]["jobLabel"]] == "kvtier",
              f"{case}: job label is not 'kvtier' (deploy/prometheus rules select job=\"kvtier\")")

    # NOTES.txt tells how to connect.
    dns = f"{spec['serviceName']}.{ns}.svc.cluster.local:{grpc_port}"
    check(dns in notes, f"{case}: NOTES.txt lacks the discovery address {dns}")
    for extra in expect.get("notes", []):
        check(extra in notes, f"{case}: NOTES.txt lacks {extra!r}")
    return docs


def check_values_documented():
    """Every key in values.yaml has a comment right above it, or is a parent whose
    children do (a documented key's children, e.g. resources.limits, need none); and
    every documented key's name appears in some template."""
    lines = open(os.path.join(CHART, "values.yaml")).read().splitlines()
    templates = "".join(open(os.path.join(CHART, "templates", f)).read()
                        for f in os.listdir(os.path.join(CHART, "templates")))
    documented_indent = None  # indent of the nearest documented ancestor
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        if documented_indent is not None and indent > documented_indent:
            continue  # inside a documented object value
        documented_indent = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        is_parent = m.group(3).strip() == "" and len(nxt) - len(nxt.lstrip()) > indent and \
            not nxt.lstrip().startswith("- ")
        if lines[i - 1].strip().startswith("#"):
            documented_indent = indent
            check(re.search(r"\b" + m.group(2) + r"\b", templates),
                  f"values.yaml:{i + 1}: {m.group(2)} is used by no template")
        elif not is_parent:
            check(False, f"values.yaml:{i + 1}: {m.group(2)} is not documented")


def expect_failure(case, args, message):
    p = render(args, expect_ok=False)
    check(p.returncode != 0 and message in p.stderr,
          f"{case}: want a render failure with {message!r}, got rc={p.returncode} {p.stderr!r}")


def main():
    base_kinds = ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "Service",
                  "ServiceAccount", "StatefulSet"]
    check_render("defaults", [], {
        "kinds": base_kinds, "replicas": 3,
        "flags": {"--listen": "0.0.0.0:50051", "--ucx_port": "50052", "--ucx_workers": "2",
                  "--http_port": "9100", "--drain_timeout": "20s", "--memory_capacity": "4GiB",
                  "--disk_capacity": "64GiB", "--reserve_memory": "true"}})
    check_render("one UCX worker", ["--set", "server.ucxWorkers=1"], {
        "kinds": base_kinds, "replicas": 3, "flags": {"--ucx_port": "50052", "--ucx_workers": "1"}})
    check_render("eight UCX workers, custom port", ["--set", "server.ucxWorkers=8,server.ports.ucx=40000"], {
        "kinds": base_kinds, "replicas": 3, "flags": {"--ucx_port": "40000", "--ucx_workers": "8"}})
    # Non-strict rendering (what helm does by default) gives the same output.
    p = subprocess.run([RENDERER, "--name", "kvtier", "--namespace", "kv", CHART], capture_output=True, text=True)
    check(p.returncode == 0 and p.stdout == render([])[0], "defaults: strict and non-strict renders differ")

    with tempfile.TemporaryDirectory() as tmp:
        pem = "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG...\n-----END CERTIFICATE-----\n"
        key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC...\n-----END PRIVATE KEY-----\n"
        secure = os.path.join(tmp, "secure.yaml")
        with open(secure, "w") as f:
            yaml.safe_dump({
                "tls": {"enabled": True, "cert": pem, "key": key, "clientAuth": True, "clientCA": pem},
                "auth": {"enabled": True, "tokens": [
                    {"token": "prefill-7f3a", "access": "w", "namespaces": ["tenantA/", "tenantB/"]},
                    {"token": "decode-91bc", "access": "r", "namespaces": ["*"]}]},
            }, f)
        check_render("tls+tokens", ["-f", secure], {
            "kinds": base_kinds + ["Secret", "Secret"], "replicas": 3,
            "flags": {"--token_file": "/etc/kvtier/auth/tokens", "--tls_cert": "/etc/kvtier/tls/tls.crt",
                      "--tls_key": "/etc/kvtier/tls/tls.key", "--tls_client_ca": "/etc/kvtier/tls/ca.crt"},
            "tokens": ["prefill-7f3a w tenantA/,tenantB/", "decode-91bc r *"],
            "notes": ["mutual TLS", "authorization: Bearer"]})
        bad_token = os.path.join(tmp, "bad_token.yaml")
        with open(bad_token, "w") as f:
            yaml.safe_dump({"auth": {"enabled": True, "tokens": [
                {"token": "x", "access": "rwx", "namespaces": ["*"]}]}}, f)
        expect_failure("bad token access", ["-f", bad_token], "access must be r, w or rw")

    check_render("existing secrets", [
        "--set", "tls.enabled=true,tls.existingSecret=kv-certs,tls.clientAuth=false",
        "--set", "auth.enabled=true,auth.existingSecret=kv-tokens"], {
        "kinds": base_kinds, "replicas": 3, "existing_secrets": {"kv-certs", "kv-tokens"},
        "flags": {"--token_file": "/etc/kvtier/auth/tokens", "--tls_cert": "/etc/kvtier/tls/tls.crt"}})
    docs = check_render("servicemonitor", ["--set", "metrics.serviceMonitor.enabled=true",
                                           "--set", "metrics.serviceMonitor.labels.release=prom"], {
        "kinds": base_kinds + ["ServiceMonitor"], "replicas": 3})
    (sm,) = by_kind(docs, "ServiceMonitor")
    check(sm["metadata"]["labels"].get("release") == "prom", "servicemonitor: extra labels missing")
    docs = check_render("scaled, no persistence, no UCX, custom ports", [
        "--set", "replicaCount=5,persistence.enabled=false,server.ports.ucx=0",
        "--set", "server.ports.grpc=7000,server.ports.http=8080,server.drainTimeoutSeconds=50",
        "--set", "terminationGracePeriodSeconds=70,preStopSleepSeconds=0",
        "--set", "podDisruptionBudget.enabled=false,networkPolicy.enabled=false",
        "--set", "server.namespaceQuota=tenantA/=100GiB"], {
        "kinds": ["ConfigMap", "Service", "Service", "ServiceAccount", "StatefulSet"], "replicas": 5,
        "persistence": False,
        "flags": {"--listen": "0.0.0.0:7000", "--ucx_port": "0", "--http_port": "8080",
                  "--drain_timeout": "50s", "--namespace_quota": "tenantA/=100GiB"},
        "notes": ["UCX is disabled", "kvtier-4.kvtier-headless.kv.svc.cluster.local:7000"]})
    (sts,) = by_kind(docs, "StatefulSet")
    check("lifecycle" not in sts["spec"]["template"]["spec"]["containers"][0], "preStopSleepSeconds=0 kept the hook")
    check_render("long release name", ["--set", "podAntiAffinityPreset=hard"], {
        "release": "a-very-long-release-name-for-the-kvtier-cache-in-production-eu-west",
        "kinds": base_kinds, "replicas": 3})

    expect_failure("grace <= drain", ["--set", "terminationGracePeriodSeconds=25"],
                   "terminationGracePeriodSeconds (25) must exceed")
    expect_failure("auth without tokens", ["--set", "auth.enabled=true"],
                   "auth.enabled needs auth.tokens or auth.existingSecret")
    expect_failure("tls without cert", ["--set", "tls.enabled=true"], "needs tls.cert")
    expect_failure("same ports", ["--set", "server.ports.http=50051"], "must differ")
    expect_failure("http among the UCX workers' ports", ["--set", "server.ports.http=50053"],
                   "server.ports: 50053 is one of the UCX workers' ports 50052-50053")
    expect_failure("no UCX workers", ["--set", "server.ucxWorkers=0"], "server.ucxWorkers: 0, want 1..64")
    expect_failure("UCX workers past 65535", ["--set", "server.ports.ucx=65535"],
                   "server.ports.ucx 65535 + server.ucxWorkers 2 passes port 65535")
    check_values_documented()

    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print("chart: all checks passed")


if __name__ == "__main__":
    main()
