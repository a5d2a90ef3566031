#!/usr/bin/python3
"""make tsan: run the concurrency end-to-end tests against the ThreadSanitizer build of lorad
(build/tsan, -fsanitize=thread): tests/e2e/test_faults.py (engine thread, HTTP threads, the libuv
loop, adapter loads racing file changes, SIGHUP, SIGTERM under load) and tests/e2e/test_auth.py
(tenant slots, 60 stalled sockets). Every daemon writes its reports to a fresh folder
(TSAN_OPTIONS log_path); the run passes when both suites pass and there is no report.
Suppressions: tests/soak/tsan.supp (uninstrumented OpenBLAS only).
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY = "/usr/bin/python3"


def main():
    tsan = os.environ.get("LORAD_TSAN_BUILD", "build/tsan")
    if not os.access(os.path.join(ROOT, tsan, "lorad"), os.X_OK):
        sys.exit("tsan: no %s/lorad (make tsan builds it)" % tsan)
    logs = tempfile.mkdtemp(prefix="lorad_tsan_")
    env = dict(os.environ, LORAD_ASAN_BUILD=tsan,
               TSAN_OPTIONS="log_path=%s/tsan second_deadlock_stack=1 suppressions=%s" % (
                   logs, os.path.join(ROOT, "tests/soak/tsan.supp")))
    rc = 0
    for t in ("tests/e2e/test_faults.py", "tests/e2e/test_auth.py"):
        t0 = time.time()
        r = subprocess.run([PY, os.path.join(ROOT, t)], env=env, capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1:] or ["(no output)"]
        print("%s %s: %s (%.0fs)" % ("PASS" if r.returncode == 0 else "FAIL", t, last[0], time.time() - t0),
              flush=True)
        if r.returncode:
            rc = 1
            print("\n".join(l for l in r.stdout.splitlines() if l.startswith("FAIL"))[:3000])
    reports = []
    for f in sorted(glob.glob(os.path.join(logs, "tsan*"))):
        text = open(f).read()
        reports += [l for l in text.splitlines() if l.startswith("SUMMARY: ThreadSanitizer")]
        if "WARNING: ThreadSanitizer" in text:
            print("---- %s ----\n%s" % (f, text[:6000]))
    print("tsan: %d report(s)%s" % (len(reports), "" if not reports else ":\n  " + "\n  ".join(sorted(set(reports)))))
    if reports:
        rc = 1
    else:
        subprocess.run(["rm", "-rf", logs])
    print("tsan: %s" % ("PASS" if rc == 0 else "FAIL"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
