#!/usr/bin/python3
"""make docker-check: replay deploy/Dockerfile without a Docker engine, in clean Debian 12 roots
made by debootstrap, then run the resulting "image" the way `docker run` would.

  /usr/bin/python3 tests/deploy/docker_check.py [--work DIR] [--mirror URL] [--keep]

Needs root (debootstrap, chroot) and Debian's mirror. Slow (about 14 minutes the first time,
7 after: the debootstrapped base is cached in WORK/base; WORK defaults to
/var/tmp/lorad-docker-check), so it is not part of `make test`.

Each stage starts from a copy of a `debootstrap --variant=minbase bookworm` root (what
debian:bookworm-slim is made of) and runs the stage's instructions in order: RUN through
`chroot ROOT /bin/sh -c` with the stage's ENV and WORKDIR, COPY from the repository (the build
context) or --from an earlier stage's root, WORKDIR, ENV. Then, in the runtime root:
  - the ENTRYPOINT is started as the image's USER (chroot --userspec) with the image's ENV and
    LORAD_HOST/LORAD_PORT overridden like `docker run -e` (the root shares the host's network,
    so it binds 127.0.0.1 on a free port), with a generated adapter placed in the /adapters volume;
  - the HEALTHCHECK command must exit 0 inside the root, a completion on the base and one on the
    adapter must answer 200 from the host, the process must run as the USER's uid;
  - the runtime root must hold no -dev package and no compiler;
  - SIGTERM must make it exit 0.
Prints one line per step and "docker-check: N passed, N failed".
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402
from deploy_common import ROOT, check, free_port, http_request, make_adapters  # noqa: E402

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCES = """Types: deb
URIs: {m}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {sec}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def log(msg):
    print("docker-check: " + msg, flush=True)


def sh(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, **kw)


class Mounts:
    def __init__(self):
        self.points = []

    def proc(self, root):
        p = os.path.join(root, "proc")
        os.makedirs(p, exist_ok=True)
        if subprocess.run(["mount", "-t", "proc", "proc", p], capture_output=True).returncode == 0:
            self.points.append(p)
        else:
            log("note: could not mount /proc in %s (continuing without)" % root)

    def release(self):
        for p in reversed(self.points):
            subprocess.run(["umount", "-l", p], capture_output=True)
        self.points = []


def safe_rmtree(path):
    """rmtree that refuses to descend into a root with anything still mounted below it."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        busy = [ln.split()[4] for ln in f if ln.split()[4].startswith(real + "/")]
    if busy:
        log("not removing %s: still mounted: %s" % (path, busy))
        return
    shutil.rmtree(path, ignore_errors=True)


def base_root(work, mirror):
    base = os.path.join(work, "base")
    if os.path.exists(os.path.join(base, ".docker-check-done")):
        return base
    if not shutil.which("debootstrap"):
        sh(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"], check=True)
    safe_rmtree(base)
    t0 = time.time()
    sh(["debootstrap", "--variant=minbase", "bookworm", base, mirror], check=True)
    os.makedirs(os.path.join(base, "etc/apt/sources.list.d"), exist_ok=True)
    with open(os.path.join(base, "etc/apt/sources.list.d/debian.sources"), "w") as f:
        f.write(SOURCES.format(m=mirror, sec=mirror.replace("/debian", "/debian-security")))
    try:
        os.remove(os.path.join(base, "etc/apt/sources.list"))
    except OSError:
        pass
    open(os.path.join(base, ".docker-check-done"), "w").close()
    log("base root made in %.0f s" % (time.time() - t0))
    return base


def copy_into(src, dst):
    """Docker COPY semantics: a directory's contents go into dst; a file into dst/ or as dst."""
    if os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.d"))
    else:
        if dst.endswith("/") or os.path.isdir(dst):
            os.makedirs(dst, exist_ok=True)
            dst = os.path.join(dst, os.path.basename(src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def in_root(root, path, cwd):
    p = path if path.startswith("/") else os.path.join(cwd, path)
    return os.path.join(root, p.lstrip("/")) + ("/" if path.endswith("/") else "")


def build_stage(stage, work, base, roots, mounts):
    root = os.path.join(work, stage.name)
    safe_rmtree(root)
    sh(["cp", "-a", base, root], check=True)
    shutil.copy2("/etc/resolv.conf", os.path.join(root, "etc/resolv.conf"))
    mounts.proc(root)
    env = {"PATH": PATH, "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    cwd = "/"
    meta = {"user": "0", "env": {}, "volumes": [], "entrypoint": None, "cmd": [], "health": None}
    for ins in stage.instrs:
        t0 = time.time()
        if ins.op == "WORKDIR":
            cwd = ins.args.strip()
            os.makedirs(in_root(root, cwd, "/"), exist_ok=True)
        elif ins.op == "ENV":
            tmp = dockerfile.Stage(stage.image, stage.name, stage.line)
            tmp.instrs = [ins]
            env.update(tmp.env())
            meta["env"].update(tmp.env())
        elif ins.op == "COPY":
            frm, srcs, dst = dockerfile.copy_parts(ins)
            for s in srcs:
                src = os.path.join(roots[frm], s.lstrip("/")) if frm else os.path.join(ROOT, s)
                d = in_root(root, dst, cwd)
                if len(srcs) > 1 and not d.endswith("/"):
                    d += "/"
                copy_into(src, d)
        elif ins.op == "RUN":
            r = sh(["chroot", root, "/bin/sh", "-c", "cd %s && %s" % (cwd, ins.args)],
                   env=env)
            if not check(r.returncode == 0, "stage %s line %d: RUN exits 0 (got %d)"
                         % (stage.name, ins.line, r.returncode)):
                raise SystemExit(1)
        elif ins.op == "USER":
            meta["user"] = ins.args.strip()
        elif ins.op == "VOLUME":
            meta["volumes"] = ins.exec_form() or ins.args.split()
        elif ins.op == "ENTRYPOINT":
            meta["entrypoint"] = ins.exec_form()
        elif ins.op == "CMD":
            meta["cmd"] = ins.exec_form() or []
        elif ins.op == "HEALTHCHECK":
            i = ins.args.find("CMD")
            meta["health"] = json.loads(ins.args[i + 3:].strip())
        log("stage %s line %d: %s done in %.0f s" % (stage.name, ins.line, ins.op,
                                                       time.time() - t0))
    return root, meta


def run_image(root, meta, work):
    user = meta["user"]
    uid = int(user.split(":")[0])
    for v in meta["volumes"]:
        check(os.path.isdir(os.path.join(root, v.lstrip("/"))), "volume %s exists" % v)
    # A generated adapter in the /adapters volume, as `-v host:/adapters` would provide.
    host_adapters = os.path.join(work, "adapters")
    aid = make_adapters(host_adapters, ["t7"])[0]
    vol = os.path.join(root, "adapters")
    copy_into(host_adapters, vol)
    port = free_port()
    env = {"PATH": PATH, "HOME": "/nonexistent"}
    env.update(meta["env"])
    env.update(LORAD_HOST="127.0.0.1", LORAD_PORT=str(port), LORAD_THREADS="2")
    argv = ["chroot", "--userspec=" + user, root] + meta["entrypoint"] + meta["cmd"]
    log("$ " + " ".join(argv) + "   (env %s)" % env)
    logf = open(os.path.join(work, "runtime-stderr.log"), "w+")
    proc = subprocess.Popen(argv, env=env, stdout=logf, stderr=logf)
    url = "http://127.0.0.1:%d" % port
    ok = False
    for _ in range(600):
        time.sleep(0.2)
        if proc.poll() is not None:
            break
        try:
            if http_request(url + "/health", timeout=2)[0] == 200:
                ok = True
                break
        except OSError:
            pass
    if not check(ok, "the image's ENTRYPOINT serves /health (log %s)" % logf.name):
        logf.seek(0)
        print(logf.read()[-3000:])
        proc.kill()
        return
    try:
        r = subprocess.run(["chroot", "--userspec=" + user, root] + meta["health"], env=env,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "HEALTHCHECK %s exits 0 inside the image: %s"
              % (meta["health"], r.stderr))
        st, _, body = http_request(url + "/v1/completions", "POST",
                                   {"prompt": "Hello", "max_tokens": 8, "temperature": 0})
        check(st == 200, "a completion on the demo model: %s %s" % (st, body))
        st, _, body = http_request(url + "/v1/completions", "POST",
                                   {"model": aid, "prompt": "Hello", "max_tokens": 8,
                                    "temperature": 0})
        check(st == 200, "a completion on adapter %s from the /adapters volume: %s %s"
              % (aid, st, body))
        r = subprocess.run(["chroot", "--userspec=" + user, root, "loractl", "--url", url,
                            "-m", aid, "-n", "4", "--stream", "complete", "Hi"], env=env,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "loractl inside the image streams a completion: %s" % r.stderr)
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as f:
            kids = f.read().split()
        pid = int(kids[0]) if kids else proc.pid
        with open("/proc/%d/status" % pid) as f:
            uids = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
        check(all(int(u) == uid for u in uids), "lorad runs as uid %d: %s" % (uid, uids))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        check(rc == 0, "SIGTERM: the image's process drains and exits 0, got %s" % rc)
    r = subprocess.run(["chroot", root, "dpkg-query", "-W", "-f", "${Package}\n"],
                       capture_output=True, text=True)
    pkgs = r.stdout.split()
    bad = [p for p in pkgs if p.endswith("-dev") or p in ("gcc", "gcc-12", "cpp", "make",
                                                           "build-essential", "python3")]
    check(r.returncode == 0 and not bad, "the runtime root has no -dev package, compiler or "
          "Python: %s" % bad)
    du = subprocess.run(["du", "-sm", "--exclude=proc", "--exclude=dev", root],
                        capture_output=True, text=True).stdout.split()[0]
    log("runtime root: %s MiB, %d packages" % (du, len(pkgs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Not under build/: the Makefile includes every build/**/*.d, and a Debian root is full of
    # /etc/*.d directories.
    ap.add_argument("--work", default="/var/tmp/lorad-docker-check")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--keep", action="store_true", help="keep the stage roots afterwards")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("docker-check: needs root (debootstrap, chroot)")
    os.makedirs(a.work, exist_ok=True)
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        stages = dockerfile.parse(f.read())
    base = base_root(a.work, a.mirror)
    mounts = Mounts()
    roots = {}
    t0 = time.time()
    try:
        meta = None
        for s in stages:
            roots[s.name], meta = build_stage(s, a.work, base, roots, mounts)
        run_image(roots[stages[-1].name], meta, a.work)
    finally:
        mounts.release()
        if not a.keep:
            for r in roots.values():
                safe_rmtree(r)
    from deploy_common import CHECKS, FAILS
    log("took %.0f s" % (time.time() - t0))
    print("docker-check: %d passed, %d failed" % (CHECKS[0] - len(FAILS), len(FAILS)))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
