#!/usr/bin/python3
"""make valgrind (and make test, as tests/soak/test_valgrind.py): lorad (normal build, -O2 -g) under valgrind --leak-check=full for one
start-serve-SIGTERM cycle: completions (plain, streamed, with an adapter), a bad request, a
client that vanishes mid-stream, then SIGTERM. Passes when the daemon exits 0 and valgrind
reports no definitely or indirectly lost bytes and no errors (--error-exitcode).
"""
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "tests", "gen"))
import test_server as ts  # noqa: E402
import gen_adapter  # noqa: E402



def main():
    build = os.environ.get("LORAD_BUILD", "build")
    binary = os.path.join(build if os.path.isabs(build) else os.path.join(ROOT, build), "lorad")
    vg = shutil.which("valgrind")
    if not vg:
        sys.exit("valgrind: not installed (apt-get install valgrind)")
    model = ts.find_model()
    tmp = tempfile.mkdtemp(prefix="lorad_vg_")
    log = os.path.join(tmp, "vg.log")
    wrapper = os.path.join(tmp, "lorad-vg")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec %s --leak-check=full --show-leak-kinds=definite,indirect "
                "--errors-for-leak-kinds=definite,indirect --error-exitcode=99 --log-file=%s %s \"$@\"\n"
                % (vg, log, binary))
    os.chmod(wrapper, 0o755)
    try:
        root = os.path.join(tmp, "root")
        gen_adapter.generate(model, "t0", os.path.join(root, "a"), gen_adapter.SEEDS.get(("default", "t0"), 0))
        t0 = time.time()
        ts.D = ts.Daemon(wrapper, model, ["--adapter-dir", root, "--threads", "1"])
        print("started under valgrind in %.0fs" % (time.time() - t0), flush=True)
        st, _, r = ts.post("/v1/completions", {"prompt": "hello", "max_tokens": 4})
        ts.check(st == 200, "plain completion: %d" % st)
        st, _, r = ts.post("/v1/completions", {"prompt": "hello", "max_tokens": 4, "model": "a"})
        ts.check(st == 200, "adapter completion: %d" % st)
        chunks, done, _ = ts.stream({"prompt": "hi", "max_tokens": 4})
        ts.check(done, "streamed completion")
        st, _, r = ts.post("/v1/completions", {"prompt": 5})
        ts.check(st == 400, "bad request: %d" % st)
        st, _, r = ts.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        ts.check(st in (200, 400, 404), "chat: %d" % st)
        body = json.dumps({"prompt": "gone", "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
        s = socket.create_connection(("127.0.0.1", ts.D.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.recv(200)
        s.close()
        time.sleep(1)
        rc = ts.D.stop(300)
        ts.check(rc == 0, "exit 0 after SIGTERM under valgrind (got %r)" % rc)
        text = open(log).read()
        m_def = re.search(r"definitely lost: ([\d,]+) bytes", text)
        m_ind = re.search(r"indirectly lost: ([\d,]+) bytes", text)
        m_err = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        d = int(m_def.group(1).replace(",", "")) if m_def else 0
        i = int(m_ind.group(1).replace(",", "")) if m_ind else 0
        e = int(m_err.group(1)) if m_err else -1
        summary = [l for l in text.splitlines() if re.search(r"lost:|reachable:|ERROR SUMMARY", l)]
        print("\n".join(summary))
        ts.check(d == 0 and i == 0, "no definite or indirect leak (definitely %d, indirectly %d bytes)" % (d, i))
        ts.check(e == 0, "valgrind error summary 0 (got %d)" % e)
        if ts.FAILS:
            print(text[-8000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d checks, %d failed" % (ts.CHECKS[0], len(ts.FAILS)))
    return 1 if ts.FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
