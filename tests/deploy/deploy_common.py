"""Helpers shared by the deploy/ and clients/ tests: find the binaries and the test model, make
adapters, start lorad replicas on port 0 and the shipped nginx router on a free loopback port.

Everything listens on 127.0.0.1 only and every process started here is stopped by its pid.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY = "/usr/bin/python3"
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))

FAILS = []
CHECKS = [0]


def check(cond, what):
    CHECKS[0] += 1
    if not cond:
        FAILS.append(what)
        print("FAIL:", what, flush=True)
    return cond


def finish(name):
    """Print the closing line and exit 0 only when every check passed."""
    print("%s: %d checks, %d failed" % (name, CHECKS[0], len(FAILS)))
    sys.exit(1 if FAILS or CHECKS[0] == 0 else 0)


def build_dir(var="LORAD_BUILD", default="build"):
    d = os.environ.get(var, default)
    return d if os.path.isabs(d) else os.path.join(ROOT, d)


def binary(name, prefer_asan=False):
    """Path of build/<name> (or the ASan build's when prefer_asan and it exists)."""
    dirs = [build_dir("LORAD_ASAN_BUILD", "build/asan")] if prefer_asan else []
    dirs.append(build_dir())
    for d in dirs:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    sys.exit("no %s binary in %s (run make)" % (name, " or ".join(dirs)))


def model_dir():
    root = os.environ.get("LORAD_MODELS", "build/testmodels")
    if not os.path.isabs(root):
        root = os.path.join(ROOT, root)
    d = os.path.join(root, "default")
    if not os.path.exists(os.path.join(d, "config.json")):
        subprocess.run([PY, os.path.join(ROOT, "tests/gen/gen_model.py"), "--preset", "default",
                        "--out", d], check=True)
    return d


def make_adapters(root, variants):
    """Write one PEFT folder per variant of tests/gen/gen_adapter.py under root/<org>/<variant>
    (cached: the generator skips folders whose stamp matches). Returns the adapter ids."""
    import gen_adapter
    base = model_dir()
    ids = []
    for v in variants:
        aid = "scale/" + v
        gen_adapter.generate(base, v, os.path.join(root, aid))
        ids.append(aid)
    return ids


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def supports_flag(lorad, flag):
    out = subprocess.run([lorad, "--help"], capture_output=True, text=True).stdout
    return flag in out


class Daemon:
    """A lorad process on 127.0.0.1, port 0; its stderr is collected."""

    def __init__(self, lorad, model, extra=(), env=None, argv=None, replace_env=False):
        self.lines = []
        self.cond = threading.Condition()
        args = argv or ([lorad, "--model", model, "--host", "127.0.0.1", "--port", "0",
                         "--threads", "1", "--kv-cache-mb", "32", "--drain-timeout", "10"]
                        + list(extra))
        e = {} if replace_env else dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        e.update(env or {})
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=e)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.port = None
        deadline = time.time() + 60
        with self.cond:
            while self.port is None and time.time() < deadline and self.proc.poll() is None:
                for ln in self.lines:
                    m = re.search(r"lorad: listening on http://([^\s:]+|\[[^\]]+\]):(\d+)", ln)
                    if m:
                        self.port = int(m.group(2))
                self.cond.wait(0.2)
        if self.port is None:
            self.kill()
            raise RuntimeError("lorad did not start:\n" + "".join(self.lines[-30:]))
        self.url = "http://127.0.0.1:%d" % self.port
        self.addr = "127.0.0.1:%d" % self.port

    def _read(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.cond.notify_all()

    def stderr(self):
        with self.cond:
            return "".join(self.lines)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        self.reader.join(5)
        return rc


class Router:
    """Debian's nginx running the shipped deploy/nginx tree, copied to a work dir with only the
    two site files (replicas.conf, site.conf) rewritten; the routing logic is used unchanged."""

    def __init__(self, workdir, replicas):
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(self.nginx, os.X_OK):
            raise RuntimeError("nginx is not installed (scripts/deps.sh installs nginx and "
                               "libnginx-mod-http-js)")
        self.dir = os.path.join(workdir, "nginx")
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "deploy", "nginx"), self.dir)
        with open(os.path.join(self.dir, "lorad", "replicas.conf"), "w") as f:
            for addr in replicas:
                f.write("server %s max_fails=1 fail_timeout=10s;\n" % addr)
        self.port = free_port()
        with open(os.path.join(self.dir, "lorad", "site.conf"), "w") as f:
            f.write("listen 127.0.0.1:%d;\naccess_log %s/access.log lorad_route;\n"
                    % (self.port, self.dir))
        self.url = "http://127.0.0.1:%d" % self.port
        g = ("daemon off; master_process on; pid %s/nginx.pid; error_log %s/error.log notice;"
             % (self.dir, self.dir))
        if os.geteuid() == 0:
            g += " user root;"  # workers must reach the default temp paths under /var/lib/nginx
        conf = os.path.join(self.dir, "nginx.conf")
        t = subprocess.run([self.nginx, "-t", "-c", conf, "-g", g], capture_output=True,
                           text=True)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + t.stderr)
        self.proc = subprocess.Popen([self.nginx, "-c", conf, "-g", g],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                st, _, _ = http_get(self.url + "/router/health", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("nginx did not start: " + self.error_log())

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown of master and workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def http_request(url, method="GET", body=None, headers=None, timeout=60):
    """(status, headers dict, parsed JSON or text) of one request."""
    m = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    c = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    try:
        c.request(method, m.group(3) or "/", body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        hdrs = dict(r.getheaders())
    finally:
        c.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return r.status, hdrs, parsed


def http_get(url, timeout=60):
    return http_request(url, "GET", timeout=timeout)
