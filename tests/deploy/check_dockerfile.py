#!/usr/bin/python3
"""Structural lint of deploy/docker/Dockerfile (no Docker engine on CI machines).

Checks: two stages on Debian 12 (build, runtime); the build stage installs the list of
scripts/install-deps.sh --list, builds kvtier-server with CMake and runs no tests; the
runtime stage installs only packages that exist in Debian (apt-cache show), no -dev
packages or compilers, copies the server from the build stage, runs it as a non-root
user (the uid the Helm chart's securityContext uses), exposes the contract's default
ports, has a HEALTHCHECK on /healthz with a tool it installs, and COPY sources exist.
With --binary BIN (repeatable; kvtier-server and the kvtier CLI, each when it exists):
every shared library BIN links comes from a runtime package, its dependencies or the
base image's essential packages.

usage: check_dockerfile.py DOCKERFILE REPO_ROOT [--binary BIN]...
"""
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def instructions(path):
    """[(INSTRUCTION, argument text)] with continuations joined and comments dropped."""
    out, cur = [], ""
    for line in open(path).read().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def apt_installs(run):
    """Package names of every `apt-get install` in a RUN command."""
    pkgs = []
    for part in re.split(r"&&|;", run):
        words = shlex.split(part.strip(), posix=True) if "$(" not in part else part.split()
        if len(words) > 2 and words[0] == "apt-get" and "install" in words:
            pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def main():
    dockerfile, root = sys.argv[1], sys.argv[2]
    binaries = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--binary"]
    ins = instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    stages = []
    for word, rest in ins:
        if word == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest, re.I)
            if not check(m, f"FROM without a stage name: {rest}"):
                continue
            image = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), ""), m.group(1))
            stages.append({"name": m.group(2), "image": image, "ins": []})
        elif stages:
            stages[-1]["ins"].append((word, rest))
    check([s["name"] for s in stages] == ["build", "runtime"], f"stages {[s['name'] for s in stages]}")
    for s in stages:
        check(re.fullmatch(r"debian:12(-slim)?|debian:bookworm(-slim)?", s["image"]),
              f"stage {s['name']}: image {s['image']} is not Debian 12")
    if failures:
        return
    build, runtime = stages

    # Build stage.
    runs = " ".join(r for w, r in build["ins"] if w == "RUN")
    check("install-deps.sh --list" in runs, "build stage does not install scripts/install-deps.sh --list")
    check(re.search(r"cmake --build \S+ --target [^&]*\bkvtier-server\b", runs), "build stage does not build kvtier-server")
    check("-DKVTIER_BUILD_TESTS=OFF" in runs, "build stage builds the tests")
    check(not re.search(r"\bctest\b|scripts/test\.sh", runs), "build stage runs tests")
    check("--no-install-recommends" in runs and "rm -rf /var/lib/apt/lists" in runs, "build stage apt hygiene")

    # COPY sources exist in the build context.
    for stage in stages:
        for w, r in stage["ins"]:
            if w in ("COPY", "ADD") and "--from=" not in r:
                for src in r.split()[:-1]:
                    if not src.startswith("--"):
                        check(os.path.exists(os.path.join(root, src)), f"COPY source {src} not in the repository")
    ignore = dockerfile + ".dockerignore"
    if check(os.path.exists(ignore), "no Dockerfile.dockerignore"):
        pats = open(ignore).read().split()
        check(".git" in pats and "build" in pats, ".dockerignore must exclude .git and build")

    # Runtime stage: packages.
    rruns = [r for w, r in runtime["ins"] if w == "RUN"]
    pkgs = [p for r in rruns for p in apt_installs(r)]
    check(pkgs, "runtime stage installs no packages")
    check(all("--no-install-recommends" in r and "rm -rf /var/lib/apt/lists" in r
              for r in rruns if "apt-get install" in r), "runtime stage apt hygiene")
    for p in pkgs:
        check(not p.endswith("-dev") and p not in ("build-essential", "cmake", "gcc", "g++", "clang", "golang-go"),
              f"runtime stage installs build package {p}")
    # One apt-cache call (each call reads the whole package cache).
    res = subprocess.run(["apt-cache", "show", "--no-all-versions"] + pkgs, capture_output=True, text=True)
    known = set(re.findall(r"^Package: (\S+)$", res.stdout, re.M))
    check(not set(pkgs) - known, f"runtime packages not in Debian (apt-cache show): {sorted(set(pkgs) - known)}")
    copies = [r for w, r in runtime["ins"] if w == "COPY" and "--from=build" in r]
    check(any("kvtier-server" in c for c in copies), "runtime stage does not copy kvtier-server from build")
    dest = copies[0].split()[-1] if copies else ""

    # Non-root user, matching the chart.
    users = [r for w, r in runtime["ins"] if w == "USER"]
    if check(users, "runtime stage has no USER"):
        user = users[-1].split(":")[0]
        check(user not in ("0", "root"), f"runtime USER {user} is root")
        uid = re.search(r"useradd [^&]*--uid (\d+)", " ".join(rruns))
        check(uid and uid.group(1) == user, "USER is not the uid useradd creates")
        values = yaml.safe_load(open(os.path.join(root, "deploy/helm/kvtier/values.yaml")))
        check(str(values["podSecurityContext"]["runAsUser"]) == user,
              f"chart runAsUser {values['podSecurityContext']['runAsUser']} != image USER {user}")

    # Ports: the contract's defaults.
    contract = open(os.path.join(root, "docs/service-contract.md")).read()
    defaults = dict(re.findall(r"^\| `(--[a-z_]+)` \| `([^`]*)`", contract, re.M))
    # UCX: a listener per worker from --ucx_port on; the default --ucx_workers=0 starts up to 8.
    check(defaults["--ucx_workers"] == "0", "contract --ucx_workers default is not 0 (auto)")
    ucx = int(defaults["--ucx_port"])
    want = {defaults["--listen"].rsplit(":", 1)[1], f"{ucx}-{ucx + 7}", defaults["--http_port"]}
    exposed = {p.split("/")[0] for w, r in runtime["ins"] if w == "EXPOSE" for p in r.split()}
    check(exposed == want, f"EXPOSE {sorted(exposed)} != contract default ports {sorted(want)}")

    # Health check on /healthz with an installed tool.
    hc = [r for w, r in runtime["ins"] if w == "HEALTHCHECK"]
    if check(len(hc) == 1, "runtime stage needs one HEALTHCHECK"):
        check("/healthz" in hc[0], "HEALTHCHECK does not probe /healthz")
        tool = re.search(r"CMD (\S+)", hc[0])
        check(tool and tool.group(1) in pkgs, f"HEALTHCHECK tool {tool and tool.group(1)} is not installed")
        env = " ".join(r for w, r in runtime["ins"] if w == "ENV")
        port_var = re.search(r"\$\{(\w+)\}", hc[0])
        check(not port_var or f"{port_var.group(1)}={defaults['--http_port']}" in env,
              "HEALTHCHECK port variable does not default to the contract's --http_port")

    # Entrypoint and default flags.
    ep = [r for w, r in runtime["ins"] if w == "ENTRYPOINT"]
    if check(ep, "no ENTRYPOINT"):
        argv = json.loads(ep[-1])
        check(argv == [os.path.join(dest, "kvtier-server")], f"ENTRYPOINT {argv} is not the copied server")
    cmd = [r for w, r in runtime["ins"] if w == "CMD"]
    if cmd:
        for flag in json.loads(cmd[-1]):
            check(flag.split("=")[0] in defaults, f"CMD flag {flag} is not in the service contract")

    # The real binaries' libraries come from the runtime packages.
    closure = None
    for binary in binaries:
        if not os.path.exists(binary):
            print(f"dockerfile: library check SKIPPED - no binary at {binary}")
            continue
        if closure is None:
            out = subprocess.run(
                ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                 "--no-breaks", "--no-replaces", "--no-enhances"] + pkgs + ["apt"],
                capture_output=True, text=True).stdout
            closure = set(re.findall(r"^(?:\s+Depends: <?)?([a-z0-9][a-z0-9+.-]+)(?::any)?>?$", out, re.M)) | set(pkgs)
            # Essential packages (and apt) are in every Debian base image, debian:12-slim
            # too; their dependencies are in the closure above.
            res = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Essential}\n"], capture_output=True, text=True)
            closure |= {l.split()[0] for l in res.stdout.splitlines() if l.endswith(" yes")}
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        libs = re.findall(r"=> (/\S+)", ldd)
        owners = {}
        for paths in ([os.path.realpath(l) for l in libs], libs):
            res = subprocess.run(["dpkg", "-S"] + paths, capture_output=True, text=True)
            for line in res.stdout.splitlines():
                pkg, _, path = line.partition(": ")
                owners[path] = pkg.split(":")[0]
        for lib in libs:
            pkg = owners.get(os.path.realpath(lib)) or owners.get(lib)
            if check(pkg, f"{lib}: no Debian package owns it"):
                check(pkg in closure, f"{binary} needs {lib} from {pkg}, which the runtime stage does not install")
        print(f"dockerfile: {len(libs)} shared libraries of {binary} checked against the runtime packages")


if __name__ == "__main__":
    main()
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print("dockerfile: all checks passed")
