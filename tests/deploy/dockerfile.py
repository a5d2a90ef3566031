"""A small Dockerfile reader for our lint (test_dockerfile.py) and the debootstrap replay
(docker_check.py): instructions with their continuation lines joined, grouped by stage.

Only what deploy/Dockerfile uses is understood: FROM ... AS, RUN, COPY [--from=], ENV k=v...,
ARG, WORKDIR, USER, VOLUME, EXPOSE, HEALTHCHECK, ENTRYPOINT, CMD, LABEL. Parser directives and
comments are skipped.
"""

import json
import re
import shlex


class Instr:
    def __init__(self, op, args, line):
        self.op = op        # upper-case instruction name
        self.args = args    # the rest of the instruction, continuation lines joined by " "
        self.line = line    # 1-based line number of its first line

    def __repr__(self):
        return "%d: %s %s" % (self.line, self.op, self.args)

    def exec_form(self):
        """The JSON array of an exec-form instruction, or None for the shell form."""
        a = self.args.strip()
        if not a.startswith("["):
            return None
        try:
            v = json.loads(a)
        except ValueError:
            return None
        return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


class Stage:
    def __init__(self, image, name, line):
        self.image = image
        self.name = name
        self.line = line
        self.instrs = []

    def all(self, op):
        return [i for i in self.instrs if i.op == op]

    def env(self):
        """ENV key=value pairs in order (shell-style quoting)."""
        out = {}
        for i in self.all("ENV"):
            for tok in shlex.split(i.args):
                if "=" not in tok:
                    raise ValueError("line %d: ENV without '=' (legacy form): %s" % (i.line, tok))
                k, v = tok.split("=", 1)
                out[k] = v
        return out


def parse(text):
    """List of Stage. Raises ValueError on what it cannot read."""
    stages = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = [s]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1].rstrip()
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1  # blank and comment lines inside a continuation are skipped, as Docker does
            if i >= len(lines):
                raise ValueError("line %d: continuation at end of file" % start)
            parts.append(lines[i].strip())
            i += 1
        full = " ".join(p for p in parts if p)
        m = re.match(r"([A-Za-z]+)\s*(.*)$", full)
        if not m:
            raise ValueError("line %d: not an instruction: %s" % (start, full))
        op, args = m.group(1).upper(), m.group(2)
        if op == "FROM":
            fm = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", args, re.I)
            if not fm:
                raise ValueError("line %d: bad FROM: %s" % (start, args))
            stages.append(Stage(fm.group(1), fm.group(2), start))
            continue
        if not stages:
            if op == "ARG":
                continue
            raise ValueError("line %d: %s before FROM" % (start, op))
        stages[-1].instrs.append(Instr(op, args, start))
    return stages


def copy_parts(instr):
    """(from_stage or None, [sources], dest) of a COPY."""
    toks = shlex.split(instr.args)
    frm = None
    while toks and toks[0].startswith("--"):
        t = toks.pop(0)
        if t.startswith("--from="):
            frm = t[len("--from="):]
    if len(toks) < 2:
        raise ValueError("line %d: COPY needs a source and a destination" % instr.line)
    return frm, toks[:-1], toks[-1]


def apt_packages(run_args):
    """Package names of every `apt-get install` in one RUN's command line."""
    pkgs = []
    for seg in re.split(r"&&|;|\|\|", run_args):
        toks = seg.split()
        if len(toks) >= 2 and toks[0] == "apt-get" and "install" in toks:
            after = toks[toks.index("install") + 1:]
            pkgs += [t for t in after if not t.startswith("-")]
    return pkgs
