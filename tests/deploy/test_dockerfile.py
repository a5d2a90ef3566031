#!/usr/bin/python3
"""Our own lint of deploy/Dockerfile (Debian has no hadolint), its entrypoint, and the
documentation of the image's variables and volumes. No Docker engine is needed; the full replay
of the build in a clean Debian root is `make docker-check` (tests/deploy/docker_check.py).

Rules checked (each failure names the line):
  stages   every FROM pins a tag (not latest) and is named; two stages, runtime last, on bookworm
  apt      every `apt-get install` runs after `apt-get update` in the same RUN, with -y and
           --no-install-recommends, and the RUN removes /var/lib/apt/lists; no upgrade, no sudo,
           no ADD, no curl/wget piped into a shell
  runtime  the runtime stage installs no -dev package, compiler or Python, yet provides every
           shared library that build/lorad and build/loractl link against directly (DT_NEEDED,
           mapped to Debian packages with dpkg -S); every package named exists in Debian
  secrets  no ENV or ARG of the image carries a key, token or password
  user     the runtime stage switches to a non-root numeric USER created by useradd before the
           ENTRYPOINT; EXPOSE, HEALTHCHECK (with loractl, which the image contains) and an
           exec-form ENTRYPOINT are present
  copy     every COPY source exists in the repository and is let through by
           deploy/Dockerfile.dockerignore; COPY --from names an earlier stage and a file the build
           stage makes; the entrypoint is executable
  docs     README.md's Deploy section names every VOLUME, every ENV of the image, and the
           variable of every flag of `lorad --help`
Entrypoint: the exact argument vector for a set of variables (with a stand-in lorad), refusals
of unknown variables and bad switch values, and a real lorad started through it.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402
from deploy_common import (ROOT, Daemon, binary, check, finish, http_get,  # noqa: E402
                           make_adapters, model_dir, build_dir)

DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
ENTRYPOINT = os.path.join(ROOT, "deploy", "docker-entrypoint.sh")
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in debian:bookworm-slim
BUILD_ONLY = re.compile(r"(-dev$|^build-essential$|^gcc|^g\+\+|^make$|^pkg-config$|^python3)")


def lorad_flags(lorad):
    """[(flag, takes_value)] from lorad --help."""
    out = subprocess.run([lorad, "--help"], capture_output=True, text=True).stdout
    flags = []
    for m in re.finditer(r"(?m)^  (--[a-z][a-z0-9-]*)( [A-Z]+)?(?: .*)?$", out):
        if m.group(1) not in ("--help", "--version"):
            flags.append((m.group(1), bool(m.group(2))))
    return flags


def env_name(flag):
    return "LORAD_" + flag[2:].replace("-", "_").upper()


def deb_exists(pkg):
    if subprocess.run(["dpkg-query", "-W", pkg], capture_output=True).returncode == 0:
        return True
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", pkg], capture_output=True)
    return r.returncode == 0 and b"Package:" in r.stdout


def needed_packages(path):
    """Debian packages providing the DT_NEEDED libraries of an ELF file (one dpkg -S call)."""
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    sonames = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    where = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    cands = {so: [p for p in (where.get(so), where.get(so) and os.path.realpath(where[so])) if p]
             for so in sonames}
    paths = sorted({p for ps in cands.values() for p in ps})
    r = subprocess.run(["dpkg", "-S"] + paths, capture_output=True, text=True)
    owner_of = {}
    for ln in r.stdout.splitlines():
        pkgs, _, f = ln.partition(": ")
        owner_of[f.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    return {so: next((owner_of[p] for p in ps if p in owner_of), None)
            for so, ps in cands.items()}


def ignored(rel, patterns):
    """Is repository path rel excluded by the .dockerignore patterns (last match wins)?"""
    import fnmatch
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, p[3:]) for part in rel.split("/"))
        else:
            hit = fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") or \
                any(fnmatch.fnmatch("/".join(rel.split("/")[:k]), p)
                    for k in range(1, rel.count("/") + 1))
        if hit:
            excluded = not neg
    return excluded


def readme_deploy_section():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"(?ms)^## Deploy\b(.*?)(?=^## |\Z)", text)
    return m.group(1) if m else ""


def lint():
    with open(DOCKERFILE) as f:
        text = f.read()
    stages = dockerfile.parse(text)
    check(len(stages) == 2, "two stages (build, runtime), got %d" % len(stages))
    names = [s.name for s in stages]
    for s in stages:
        check(":" in s.image and not s.image.endswith(":latest"),
              "line %d: FROM %s must pin a tag other than latest" % (s.line, s.image))
        check(s.image.startswith("debian:bookworm"), "line %d: Debian 12 base, got %s"
              % (s.line, s.image))
        check(bool(s.name), "line %d: every stage is named (FROM ... AS name)" % s.line)
    build, runtime = stages[0], stages[-1]
    check(runtime.name == "runtime", "the last stage is 'runtime', got %s" % runtime.name)

    all_pkgs = {}
    for s in stages:
        for ins in s.instrs:
            a = ins.args
            check(ins.op != "ADD", "line %d: use COPY, not ADD" % ins.line)
            if ins.op != "RUN":
                continue
            check(not re.search(r"apt-get\s+(dist-)?upgrade", a),
                  "line %d: no apt-get upgrade in an image build" % ins.line)
            check(not re.search(r"\bsudo\b", a), "line %d: no sudo" % ins.line)
            check(not re.search(r"(curl|wget)[^|&;]*\|\s*(ba|da)?sh", a),
                  "line %d: no download piped into a shell" % ins.line)
            if "apt-get install" in a or re.search(r"apt-get\s+.*install", a):
                ui, ii = a.find("apt-get update"), a.find("apt-get install")
                check(0 <= ui < ii, "line %d: apt-get update in the same RUN, before install"
                      % ins.line)
                check(re.search(r"apt-get install[^&;]*\s-y\b", a) is not None,
                      "line %d: apt-get install -y" % ins.line)
                check("--no-install-recommends" in a, "line %d: --no-install-recommends"
                      % ins.line)
                check(re.search(r"rm -rf /var/lib/apt/lists/\*", a) is not None and
                      a.find("rm -rf /var/lib/apt/lists") > ii,
                      "line %d: rm -rf /var/lib/apt/lists/* after the install" % ins.line)
                all_pkgs.setdefault(s.name, []).extend(dockerfile.apt_packages(a))
    for s in stages:
        for k in s.env():
            check(not re.search(r"KEY|TOKEN|SECRET|PASSWORD", k),
                  "stage %s: no secret baked into the image (ENV %s)" % (s.name, k))
        for a in s.all("ARG"):
            check(not re.search(r"KEY|TOKEN|SECRET|PASSWORD", a.args, re.I),
                  "line %d: no secret passed as a build ARG" % a.line)
    rt_pkgs = set(all_pkgs.get("runtime", []))
    for p in sorted(rt_pkgs):
        check(not BUILD_ONLY.search(p), "runtime stage installs build-only package %s" % p)
    for p in ("build-essential", "pkg-config", "python3-numpy"):
        check(p in all_pkgs.get("build", []), "build stage installs %s" % p)
    for stage, pkgs in all_pkgs.items():
        for p in pkgs:
            check(deb_exists(p), "stage %s: %s is a Debian package" % (stage, p))
    for exe in ("lorad", "loractl"):
        for so, owner in needed_packages(binary(exe)).items():
            check(owner is not None and (owner in rt_pkgs or owner in BASE_PACKAGES),
                  "runtime stage provides %s (needed by %s), from package %s" % (so, exe, owner))

    # user, ports, health, entrypoint
    users = runtime.all("USER")
    ep = runtime.all("ENTRYPOINT")
    check(len(users) >= 1 and len(ep) == 1, "runtime has USER and one ENTRYPOINT")
    if users and ep:
        u = users[-1].args.split(":")[0].strip()
        check(u.isdigit() and u != "0", "USER is a numeric non-root uid, got %s" % u)
        check(users[-1].line < ep[0].line, "USER comes before ENTRYPOINT")
        made = re.search(r"useradd [^&]*--uid (\d+)", " ".join(i.args for i in runtime.all("RUN")))
        check(made and made.group(1) == u, "the USER uid %s is created by useradd" % u)
        form = ep[0].exec_form()
        check(form is not None, "ENTRYPOINT in exec form (JSON array)")
    for c in runtime.all("CMD"):
        check(c.exec_form() is not None, "line %d: CMD in exec form" % c.line)
    expose = runtime.all("EXPOSE")
    check(len(expose) == 1 and expose[0].args.strip() == runtime.env().get("LORAD_PORT"),
          "EXPOSE matches LORAD_PORT: %s" % [e.args for e in expose])
    hc = runtime.all("HEALTHCHECK")
    check(len(hc) == 1 and "loractl" in hc[0].args and " health" in hc[0].args,
          "HEALTHCHECK runs `loractl ... health`")
    copied = " ".join(i.args for i in runtime.all("COPY"))
    check("loractl" in copied, "loractl is copied into the runtime image")

    # COPY sources
    with open(os.path.join(ROOT, "deploy", "Dockerfile.dockerignore")) as f:
        pats = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    for idx, s in enumerate(stages):
        for ins in s.all("COPY"):
            frm, srcs, dst = dockerfile.copy_parts(ins)
            if frm:
                check(frm in names[:idx], "line %d: COPY --from=%s names an earlier stage"
                      % (ins.line, frm))
                made = " ".join(i.args for i in stages[names.index(frm)].all("RUN"))
                for src in srcs:
                    check(os.path.basename(src.rstrip("/")) in made,
                          "line %d: %s is made by a RUN of stage %s" % (ins.line, src, frm))
                continue
            for src in srcs:
                p = os.path.join(ROOT, src)
                check(os.path.exists(p), "line %d: COPY source %s exists" % (ins.line, src))
                check(not ignored(src.rstrip("/"), pats),
                      "line %d: COPY source %s is not excluded by Dockerfile.dockerignore"
                      % (ins.line, src))
    check(ignored("build/lorad", pats) and ignored(".git/config", pats),
          "Dockerfile.dockerignore keeps build/ and .git out of the context")
    check(os.stat(ENTRYPOINT).st_mode & stat.S_IXUSR, "docker-entrypoint.sh is executable")

    # documentation
    doc = readme_deploy_section()
    check(len(doc) > 500, "README.md has a Deploy section")
    for v in runtime.all("VOLUME"):
        for path in (v.exec_form() or v.args.split()):
            check("`%s`" % path in doc, "README Deploy documents the volume %s" % path)
    for k in runtime.env():
        check(k in doc, "README Deploy documents ENV %s" % k)
    for flag, _ in lorad_flags(binary("lorad")):
        check(env_name(flag) in doc, "README Deploy documents %s (for %s)"
              % (env_name(flag), flag))
    for k in ("LORAD_EXTRA_ARGS", "LORAD_URL", "LORAD_API_KEY"):
        check(k in doc, "README Deploy documents %s" % k)
    return runtime


def entrypoint(runtime):
    lorad = binary("lorad")
    flags = dict(lorad_flags(lorad))
    tmp = tempfile.mkdtemp(prefix="lorad-ep-")
    try:
        help_file = os.path.join(tmp, "help.txt")
        with open(help_file, "w") as f:
            f.write(subprocess.run([lorad, "--help"], capture_output=True, text=True).stdout)
        fake = os.path.join(tmp, "fake-lorad")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\nif [ "$1" = --help ]; then cat %s; exit 0; fi\n'
                    'for a in "$@"; do printf "%%s\\n" "$a"; done\n' % help_file)
        os.chmod(fake, 0o755)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LORAD_")}
        base_env["LORAD_BIN"] = fake

        def run(env, args=()):
            e = dict(base_env)
            e.update(env)
            return subprocess.run([ENTRYPOINT] + list(args), capture_output=True, text=True,
                                  env=e)

        env = {"LORAD_MODEL": "/models/my model", "LORAD_PORT": "9000", "LORAD_THREADS": "",
               "LORAD_EXTRA_ARGS": "--max-seqs 4", "LORAD_URL": "http://ignored"}
        want = ["--model", "/models/my model", "--port", "9000"]
        if "--adapter-dir" in flags:
            env["LORAD_ADAPTER_DIR"] = "/a:/b c::"
            want += ["--adapter-dir", "/a", "--adapter-dir", "/b c"]
        switch = next((f for f, v in flags.items() if not v), None)
        if switch:
            env[env_name(switch)] = "Yes"
        r = run(env, ["--log-level", "debug"])
        got = r.stdout.split("\n")[:-1]
        # Flags come in --help order; compare as a multiset of (flag, value) plus the order of
        # the tail (extra args, then the container's arguments).
        check(r.returncode == 0, "entrypoint with a stand-in lorad: exit 0 (%s)" % r.stderr)
        tail = ["--max-seqs", "4", "--log-level", "debug"]
        check(got[-4:] == tail, "LORAD_EXTRA_ARGS then container args last: %s" % got)
        head = got[:-4]
        pairs = []
        k = 0
        while k < len(head):
            if flags.get(head[k]) is False:
                pairs.append((head[k],))
                k += 1
            else:
                pairs.append(tuple(head[k:k + 2]))
                k += 2
        wanted = [tuple(want[i:i + 2]) for i in range(0, len(want), 2)]
        if switch:
            wanted.append((switch,))
        check(sorted(pairs) == sorted(wanted), "entrypoint arguments: got %s want %s"
              % (pairs, wanted))
        if switch:
            r = run({env_name(switch): "0"})
            check(r.returncode == 0 and switch not in r.stdout, "%s=0 leaves the switch off"
                  % env_name(switch))
            r = run({env_name(switch): "maybe"})
            check(r.returncode == 2 and env_name(switch) in r.stderr,
                  "bad switch value refused: %d %r" % (r.returncode, r.stderr))
        r = run({"LORAD_API_KEYZ": "x"})
        check(r.returncode == 2 and "LORAD_API_KEYZ" in r.stderr,
              "an unknown LORAD_ variable stops the container: %d %r" % (r.returncode, r.stderr))

        # The real thing, with the image's defaults overridden as `docker run -e` would.
        env = dict(runtime.env())
        root = os.path.join(build_dir(), "deploy-test", "entrypoint-adapters")
        extra_root = os.path.join(build_dir(), "deploy-test", "entrypoint-adapters2")
        has_adapters = "--adapter-dir" in flags
        if has_adapters:
            make_adapters(root, ["t2"])
            make_adapters(extra_root, ["t3"])
        env.update(LORAD_MODEL=model_dir(), LORAD_HOST="127.0.0.1", LORAD_PORT="0",
                   LORAD_THREADS="1", LORAD_KV_CACHE_MB="16",
                   LORAD_SERVED_MODEL_NAME="served-by-entrypoint",
                   LORAD_ADAPTER_DIR=root + ":" + extra_root if has_adapters else "")
        env = {k: v for k, v in env.items() if k in flags_env(flags) or k == "LORAD_EXTRA_ARGS"}
        e = dict(base_env)
        del e["LORAD_BIN"]
        e["LORAD_BIN"] = lorad
        e.update(env)
        d = Daemon(lorad, None, argv=[ENTRYPOINT], env=e, replace_env=True)
        try:
            st, _, models = http_get(d.url + "/v1/models")
            check(st == 200 and models["data"][0]["id"] == "served-by-entrypoint",
                  "lorad started by the entrypoint serves LORAD_SERVED_MODEL_NAME: %s" % models)
            st, _, h = http_get(d.url + "/health")
            check(st == 200, "health through the entrypoint-started lorad")
            if has_adapters:
                from deploy_common import http_request
                for aid in ("scale/t2", "scale/t3"):
                    st, _, body = http_request(d.url + "/v1/completions", "POST",
                                               {"model": aid, "prompt": "x", "max_tokens": 2})
                    check(st == 200, "adapter %s from the LORAD_ADAPTER_DIR list: %s %s"
                          % (aid, st, body))
        finally:
            rc = d.stop()
            check(rc == 0, "entrypoint-started lorad exits 0 on SIGTERM (exec'd, so it got the "
                  "signal itself), got %s" % rc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def flags_env(flags):
    return {env_name(f) for f in flags}


if __name__ == "__main__":
    rt = lint()
    entrypoint(rt)
    finish("test_dockerfile")
