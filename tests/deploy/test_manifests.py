#!/usr/bin/python3
"""Validation of deploy/'s other files, without Docker or Kubernetes:

- docker-compose.yml: Debian's `docker-compose -f FILE config` must accept it (it validates the
  file against the compose schema without an engine); then its content is checked against the
  image: volume targets = the Dockerfile's VOLUMEs, container port = EXPOSE, every LORAD_*
  variable names a flag of `lorad --help`, the Prometheus config it mounts exists.
- prometheus.yml: scrapes /metrics of a compose service on the port lorad listens on.
- systemd/lorad.service: `systemd-analyze verify` (with ExecStart pointed at build/lorad), the
  hardening options, every flag of ExecStart exists, every variable has a default; then lorad is
  started with the unit's own ExecStart line (variables expanded as systemd would) and answers.
- nginx: `nginx -t` on deploy/nginx/nginx.conf as shipped.
- k8s/*.yaml: every document parses and has apiVersion/kind/name; selectors match pod labels;
  Services select existing pods and target existing named ports; probes hit /health; resources,
  non-root uid = the image's USER, read-only mounts of claims that base.yaml declares; ConfigMap
  variables are lorad flags; the StatefulSet's headless Service; the router ConfigMap carries
  deploy/nginx/* byte for byte and lists exactly the StatefulSet's pods (rewrite it with --write).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402
from deploy_common import ROOT, Daemon, binary, check, finish, http_get, model_dir  # noqa: E402
from test_dockerfile import env_name, lorad_flags  # noqa: E402

DEPLOY = os.path.join(ROOT, "deploy")
NGINX = os.path.join(DEPLOY, "nginx")
ROUTER_FILES = [("nginx.conf", "nginx.conf"), ("router.conf", "lorad/router.conf"),
                ("route.js", "lorad/route.js")]
BEGIN = "# --- BEGIN router ConfigMap"
END = "# --- END router ConfigMap"


def image():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        rt = dockerfile.parse(f.read())[-1]
    vols = []
    for v in rt.all("VOLUME"):
        vols += v.exec_form() or v.args.split()
    uid = int(rt.all("USER")[-1].args.split(":")[0])
    return {"volumes": set(vols), "port": int(rt.all("EXPOSE")[0].args), "uid": uid,
            "env": rt.env()}


def valid_vars():
    return {env_name(f) for f, _ in lorad_flags(binary("lorad"))} | {"LORAD_EXTRA_ARGS"}


# ---------------------------------------------------------------------- compose + prometheus


def compose(img):
    path = os.path.join(DEPLOY, "docker-compose.yml")
    dc = shutil.which("docker-compose")
    if not check(dc is not None, "docker-compose is installed (scripts/deps.sh installs Debian's "
                                 "docker-compose package)"):
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAD_")}
    r = subprocess.run([dc, "-f", path, "config"], capture_output=True, text=True, env=env,
                       cwd=DEPLOY)
    if not check(r.returncode == 0, "docker-compose config accepts the file: %s" % r.stderr):
        return
    cfg = yaml.safe_load(r.stdout)
    svcs = cfg.get("services", {})
    check(set(svcs) >= {"lorad", "prometheus"}, "services lorad and prometheus: %s" % list(svcs))
    lo = svcs.get("lorad", {})
    b = lo.get("build", {})
    check(os.path.exists(os.path.join(b.get("context", ""), b.get("dockerfile", ""))),
          "the lorad service builds deploy/Dockerfile: %s" % b)
    targets = {v["target"] for v in lo.get("volumes", [])}
    check(targets == img["volumes"], "compose mounts the image's volumes %s, got %s"
          % (img["volumes"], targets))
    check(all(v.get("read_only") for v in lo.get("volumes", [])), "lorad's mounts are read-only")
    ports = {p.get("target") if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
             for p in lo.get("ports", [])}
    check(ports == {img["port"]}, "compose publishes the EXPOSEd port: %s" % ports)
    bad = set(lo.get("environment", {})) - valid_vars()
    check(not bad, "compose's LORAD_* variables are lorad flags: unknown %s" % bad)
    pr = svcs.get("prometheus", {})
    mounts = {v.get("target"): v.get("source") for v in pr.get("volumes", [])}
    src = mounts.get("/etc/prometheus/prometheus.yml")
    check(src and os.path.samefile(src, os.path.join(DEPLOY, "prometheus.yml")),
          "prometheus mounts deploy/prometheus.yml: %s" % mounts)
    check(pr.get("image", "").split(":")[-1] not in ("", "latest"), "prometheus image pinned")
    with open(os.path.join(DEPLOY, "prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    jobs = prom.get("scrape_configs", [])
    targets = [t for j in jobs for sc in j.get("static_configs", []) for t in sc["targets"]]
    check(any(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs) and
          "lorad:%d" % img["port"] in targets, "prometheus scrapes lorad:%d/metrics: %s"
          % (img["port"], targets))


# ---------------------------------------------------------------------- systemd


def unit_entries(path):
    entries = []
    section = None
    with open(path) as f:
        for ln in f:
            ln = ln.strip()
            if not ln or ln.startswith(("#", ";")):
                continue
            if ln.startswith("["):
                section = ln.strip("[]")
                continue
            k, _, v = ln.partition("=")
            entries.append((section, k.strip(), v.strip()))
    return entries


def systemd():
    path = os.path.join(DEPLOY, "systemd", "lorad.service")
    lorad = binary("lorad")
    entries = unit_entries(path)
    svc = {}
    for sec, k, v in entries:
        if sec == "Service":
            svc.setdefault(k, []).append(v)
    for k, v in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                 ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("CapabilityBoundingSet", ""),
                 ("RestrictSUIDSGID", "yes"), ("SystemCallArchitectures", "native")):
        check(svc.get(k) == [v], "lorad.service: %s=%s, got %s" % (k, v, svc.get(k)))
    check(svc.get("DynamicUser") == ["yes"] or "User" in svc, "a dynamic or service user")
    check(int(svc.get("TimeoutStopSec", ["0"])[0]) > 30, "TimeoutStopSec exceeds the 30 s drain")
    envs = dict(v.split("=", 1) for v in svc.get("Environment", []))
    exec_start = svc.get("ExecStart", [""])[0]
    used = set(re.findall(r"\$\{?([A-Z_]+)\}?", exec_start))
    check(used <= set(envs), "every variable of ExecStart has an Environment= default: %s"
          % (used - set(envs)))
    flags = {f for f, _ in lorad_flags(lorad)}
    for tok in shlex.split(exec_start):
        if tok.startswith("--"):
            check(tok in flags, "ExecStart flag %s exists in lorad --help" % tok)
    sa = shutil.which("systemd-analyze")
    tmp = os.path.join(ROOT, os.environ.get("LORAD_BUILD", "build"), "deploy-test")
    os.makedirs(tmp, exist_ok=True)
    if check(sa is not None, "systemd-analyze is available (Debian package systemd)"):
        copy = os.path.join(tmp, "lorad.service")
        with open(path) as f:
            text = f.read().replace("/usr/local/bin/lorad", os.path.abspath(lorad))
        with open(copy, "w") as f:
            f.write(text)
        r = subprocess.run([sa, "verify", copy], capture_output=True, text=True)
        check(r.returncode == 0, "systemd-analyze verify lorad.service: %s" % r.stderr.strip())

    # Start lorad with the unit's own ExecStart: ${X} is one word, $X splits on blanks.
    envs.update(LORAD_MODEL=model_dir(), LORAD_HOST="127.0.0.1", LORAD_PORT="0",
                LORAD_ADAPTER_DIR=os.path.join(tmp, "adapters"),
                LORAD_EXTRA_ARGS="--threads 1 --kv-cache-mb 16")
    os.makedirs(envs["LORAD_ADAPTER_DIR"], exist_ok=True)
    argv = []
    for tok in shlex.split(exec_start):
        m = re.fullmatch(r"\$\{([A-Z_]+)\}", tok)
        m2 = re.fullmatch(r"\$([A-Z_]+)", tok)
        if m:
            argv.append(envs[m.group(1)])
        elif m2:
            argv += envs[m2.group(1)].split()
        else:
            argv.append(tok)
    argv[0] = lorad if argv[0] == "/usr/local/bin/lorad" else argv[0]
    d = Daemon(lorad, None, argv=argv)
    try:
        st, _, body = http_get(d.url + "/health")
        check(st == 200, "lorad started by the unit's ExecStart answers /health: %s" % st)
    finally:
        check(d.stop() == 0, "and drains on SIGTERM with exit 0")


# ---------------------------------------------------------------------- nginx


def nginx():
    ng = shutil.which("nginx") or "/usr/sbin/nginx"
    if not check(os.access(ng, os.X_OK), "nginx is installed (scripts/deps.sh)"):
        return
    tmp = os.path.join(ROOT, os.environ.get("LORAD_BUILD", "build"), "deploy-test")
    os.makedirs(tmp, exist_ok=True)
    r = subprocess.run([ng, "-t", "-c", os.path.join(NGINX, "nginx.conf"), "-g",
                        "pid %s/nginx-t.pid; error_log stderr;" % tmp],
                       capture_output=True, text=True)
    check(r.returncode == 0, "nginx -t on the shipped deploy/nginx/nginx.conf: %s" % r.stderr)


# ---------------------------------------------------------------------- k8s


def router_configmap(sts_name, svc_name, n, port):
    def block(text):
        return "".join("    " + ln if ln.strip() else "\n" for ln in text.splitlines(True))
    parts = ["apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lorad-router\n"
             "  labels: {app.kubernetes.io/name: lorad-router}\ndata:\n"]
    for key, rel in ROUTER_FILES:
        with open(os.path.join(NGINX, rel)) as f:
            parts.append("  %s: |\n%s" % (key, block(f.read())))
    reps = "".join("server %s-%d.%s:%d max_fails=1 fail_timeout=10s;\n"
                   % (sts_name, i, svc_name, port) for i in range(n))
    parts.append("  replicas.conf: |\n" + block(reps))
    parts.append("  site.conf: |\n" + block("listen 8080;\naccess_log /dev/stdout lorad_route;\n"))
    return "".join(parts)


def load_docs(name):
    with open(os.path.join(DEPLOY, "k8s", name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]


def k8s(img, write=False):
    scale_path = os.path.join(DEPLOY, "k8s", "scaleout.yaml")
    with open(scale_path) as f:
        text = f.read()
    if write:
        docs = [d for d in yaml.safe_load_all(text) if d]
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        cm = router_configmap(sts["metadata"]["name"], sts["spec"]["serviceName"],
                              sts["spec"]["replicas"], img["port"])
        a, b = text.index(BEGIN), text.index(END)
        a = text.index("\n", a) + 1
        text = text[:a] + cm + "---\n" + text[b:]
        with open(scale_path, "w") as f:
            f.write(text)
        print("rewrote the router ConfigMap in", scale_path)

    base = load_docs("base.yaml")
    files = {n: load_docs(n) for n in ("lorad.yaml", "scaleout.yaml", "gateway-inference.yaml")}
    pvcs = {d["metadata"]["name"] for d in base if d["kind"] == "PersistentVolumeClaim"}
    cms = {d["metadata"]["name"]: d for d in base + files["scaleout.yaml"] if d["kind"] ==
           "ConfigMap"}
    check(pvcs == {"lorad-models", "lorad-adapters"}, "base.yaml claims: %s" % pvcs)
    env = cms.get("lorad-env", {}).get("data", {})
    bad = set(env) - valid_vars()
    check(env and not bad, "lorad-env variables are lorad flags: unknown %s" % bad)
    for name, docs in [("base.yaml", base)] + list(files.items()):
        for d in docs:
            check(all(k in d for k in ("apiVersion", "kind", "metadata")) and
                  d["metadata"].get("name"), "%s: a document without apiVersion/kind/name" % name)
    for name in ("lorad.yaml", "scaleout.yaml"):
        docs = files[name]
        pods = []
        for w, tpl in pod_specs(docs):
            wn = "%s %s" % (w["kind"], w["metadata"]["name"])
            labels = tpl["metadata"]["labels"]
            sel = w["spec"]["selector"]["matchLabels"]
            check(sel.items() <= labels.items(), "%s: selector %s matches its pod labels" % (wn, sel))
            pods.append((labels, tpl["spec"]))
            spec = tpl["spec"]
            for c in spec["containers"]:
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                check("resources" in c and "requests" in c["resources"] and
                      "limits" in c["resources"], "%s/%s: resources" % (wn, c["name"]))
                rp = c.get("readinessProbe", {}).get("httpGet", {})
                check(rp.get("port") in ports, "%s/%s: readiness probe on a named port" % (wn,
                                                                                         c["name"]))
                if c["name"] != "lorad":
                    continue
                check(ports.get("http") == img["port"], "%s: container port = EXPOSE" % wn)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    check(c.get(probe, {}).get("httpGet", {}).get("path") == "/health",
                          "%s: %s on /health" % (wn, probe))
                sc = spec.get("securityContext", {})
                check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == img["uid"],
                      "%s: runs as non-root uid %d" % (wn, img["uid"]))
                csc = c.get("securityContext", {})
                check(csc.get("allowPrivilegeEscalation") is False and
                      csc.get("readOnlyRootFilesystem") is True, "%s: no escalation, read-only /"
                      % wn)
                check(spec.get("terminationGracePeriodSeconds", 30) > 30,
                      "%s: grace period exceeds the 30 s drain" % wn)
                refs = [e["configMapRef"]["name"] for e in c.get("envFrom", [])]
                check(refs == ["lorad-env"], "%s: env from lorad-env" % wn)
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
                check(set(mounts) == img["volumes"], "%s: mounts the image volumes %s"
                      % (wn, sorted(mounts)))
                check(all(m.get("readOnly") for m in mounts.values()), "%s: mounts read-only" % wn)
                vols = {v["name"]: v for v in spec.get("volumes", [])}
                for m in mounts.values():
                    claim = vols.get(m["name"], {}).get("persistentVolumeClaim", {})
                    check(claim.get("claimName") in pvcs, "%s: volume %s is a base.yaml claim"
                          % (wn, m["name"]))
        for s in docs:
            if s["kind"] != "Service":
                continue
            sel = s["spec"]["selector"]
            match = [spec for labels, spec in pods if sel.items() <= labels.items()]
            check(match, "%s: Service %s selects pods of this file" % (name, s["metadata"]["name"]))
            for p in s["spec"]["ports"]:
                check(all(any(pp.get("name") == p["targetPort"] for c in spec["containers"]
                              for pp in c.get("ports", [])) for spec in match),
                      "%s: Service %s targets a named container port" % (name,
                                                                          s["metadata"]["name"]))

    docs = files["scaleout.yaml"]
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    if check(len(sts) == 1, "scaleout.yaml has one StatefulSet"):
        sts = sts[0]
        svc = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] ==
               sts["spec"]["serviceName"]]
        check(svc and svc[0]["spec"].get("clusterIP") == "None",
              "the StatefulSet's serviceName is a headless Service")
        router = cms.get("lorad-router", {}).get("data", {})
        for key, rel in ROUTER_FILES:
            with open(os.path.join(NGINX, rel)) as f:
                check(router.get(key) == f.read(), "router ConfigMap %s equals deploy/nginx/%s "
                      "(run tests/deploy/test_manifests.py --write)" % (key, rel))
        want = router_configmap(sts["metadata"]["name"], sts["spec"]["serviceName"],
                                sts["spec"]["replicas"], img["port"])
        check(yaml.safe_load(want)["data"].get("replicas.conf") == router.get("replicas.conf"),
              "router replicas.conf lists the StatefulSet's %d pods" % sts["spec"]["replicas"])
        dep = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] ==
               "lorad-router"]
        if check(dep, "a lorad-router Deployment"):
            vols = dep[0]["spec"]["template"]["spec"]["volumes"]
            keys = {it["key"] for v in vols for it in v.get("configMap", {}).get("items", [])}
            check(keys == set(router), "the router mounts every ConfigMap key: %s vs %s"
                  % (keys, set(router)))
    gw = files["gateway-inference.yaml"]
    pool = [d for d in gw if d["kind"] == "InferencePool"]
    if check(len(pool) == 1, "one InferencePool"):
        p = pool[0]["spec"]
        sts_labels = sts["spec"]["template"]["metadata"]["labels"] if isinstance(sts, dict) else {}
        check(p["selector"].items() <= sts_labels.items() and p["targetPortNumber"] ==
              img["port"], "the InferencePool selects the replica pods on the lorad port")
        for m in (d for d in gw if d["kind"] == "InferenceModel"):
            check(m["spec"]["poolRef"]["name"] == pool[0]["metadata"]["name"],
                  "InferenceModel %s points at the pool" % m["metadata"]["name"])


if __name__ == "__main__":
    img = image()
    k8s(img, write="--write" in sys.argv)
    compose(img)
    systemd()
    nginx()
    finish("test_manifests")
