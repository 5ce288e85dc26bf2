#!/usr/bin/env python3
"""Atomic read-modify-write instructions per request, from a callgrind profile.

Usage: atomics.py BINARY CALLGRIND_OUT REQUESTS [TOP] [BASE_OUT BASE_REQUESTS]

The profile must have been taken with --dump-instr=yes. The atomic instructions are the
binary's lock-prefixed instructions and its xchg with a memory operand (implicitly locked),
found with objdump; their execution counts are summed from the profile, per function. Only
the binary's own code is counted (the C library runs none on the request path). With BASE_OUT
and BASE_REQUESTS, that shorter run's counts are subtracted first (what both runs did once,
such as opening their connections, cancels out).

Callgrind counts instructions, and an atomic read-modify-write counts as one, but it costs
about 20 cycles on this machine even uncontended: that is why this figure is reported apart.
"""
import collections
import re
import subprocess
import sys


def atomic_addresses(binary):
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = set()
    for line in dis.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(lock |xchg)", line)
        if m and (m.group(2) == "lock " or "(" in line):
            found.add(int(m.group(1), 16))
    return found


def main():
    binary, profile, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    atomics = atomic_addresses(binary)
    per_fn = count(binary, profile, atomics)
    if len(sys.argv) > 6:
        per_fn.subtract(count(binary, sys.argv[5], atomics))
        requests -= int(sys.argv[6])
    total = sum(per_fn.values())
    print(f"**{total / requests:.0f}** per request; the functions that run the most of them:")
    print()
    print("```")
    for name, n in per_fn.most_common(top):
        print(f"{n / requests:5.1f}  {(name or '?')[:110]}")
    print("```")


def count(binary, profile, atomics):
    """Executions of the atomic instructions in `profile`, per function."""
    names = {}
    obj = fn = None
    last = 0
    after_call = False
    per_fn = collections.Counter()
    for line in open(profile, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        m = re.match(r"(ob|fn|cob|cfn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, ident, name = m.groups()
            table = "ob" if kind in ("ob", "cob") else "fn"
            if name:
                names[(table, ident)] = name
            if kind == "ob":
                obj = names.get((table, ident))
            elif kind == "fn":
                fn = names.get((table, ident))
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if line[0] not in "0123456789+-*":
            continue
        fields = line.split()
        pos = fields[0]
        if pos.startswith("0x"):
            addr = int(pos, 16)
        elif pos.startswith("+"):
            addr = last + int(pos[1:], 0)
        elif pos.startswith("-"):
            addr = last - int(pos[1:], 0)
        elif pos == "*":
            addr = last
        else:
            addr = int(pos)
        last = addr
        if after_call:
            # The inclusive cost of a call, not an execution of this instruction.
            after_call = False
            continue
        if obj == binary and addr in atomics and len(fields) > 2:
            per_fn[fn] += int(fields[2])
    return per_fn


if __name__ == "__main__":
    main()
