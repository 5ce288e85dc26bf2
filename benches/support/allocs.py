#!/usr/bin/env python3
"""Heap allocations per request, from callgrind's call counts.

Usage: allocs.py CALLGRIND_OUT REQUESTS [TOP] [BASE_OUT BASE_REQUESTS]

Counts the calls into the allocator's entry points (mimalloc's, which apiward's global allocator
calls, and the C library's) made from outside the allocator: allocations (malloc, zalloc,
calloc) and reallocations apart, per request. With BASE_OUT and BASE_REQUESTS, the counts of
that shorter run of the same kind are subtracted first, so that what both runs did once (open
their connections, TLS handshakes included) cancels out.

The TOP callers of the allocations are listed, each seen through the allocation wrappers
(`__rust_alloc`, `RawVec` growth, `Vec`/`String` reservation, ...) up to the first function that
is none: that one asked for the memory.
"""
import collections
import re
import sys

ALLOC = {
    "mi_malloc", "mi_malloc_aligned", "mi_zalloc", "mi_zalloc_aligned", "mi_calloc",
    "mi_malloc_small", "mi_new", "malloc", "calloc", "posix_memalign", "aligned_alloc",
}
REALLOC = {"mi_realloc", "mi_realloc_aligned", "mi_rezalloc_aligned", "realloc"}
# Frames that only pass an allocation on; the caller above them is the one reported.
WRAPPER = re.compile(
    r"__rust_alloc|__rust_realloc|__rust_alloc_zeroed|__rdl_|__rg_|alloc::alloc::|"
    r"alloc::raw_vec::|RawVec|RawVecInner|finish_grow|do_reserve_and_handle|grow_one|"
    r"grow_amortized|<alloc::vec::Vec<.*>>::reserve|Vec<.*>::with_capacity|::to_vec|"
    r"alloc::boxed::Box<.*>::new|<alloc::string::String>::reserve|"
    r"bytes::bytes_mut::BytesMut>::reserve_inner|\bclone\b"
)


def in_allocator(name):
    return name.startswith(("mi_", "_mi_")) or name in ALLOC or name in REALLOC


def calls(profile):
    """(caller, callee) -> number of calls."""
    names = {}
    fn = cfn = None
    counted = collections.Counter()
    for line in open(profile, encoding="utf-8", errors="replace"):
        m = re.match(r"(fn|cfn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                fn = names.get(ident, "?")
            else:
                cfn = names.get(ident, "?")
            continue
        if line.startswith("calls="):
            counted[(fn, cfn)] += int(line.split()[0][len("calls="):])
    return counted


def callers_of(counted):
    by_callee = collections.defaultdict(collections.Counter)
    for (caller, callee), n in counted.items():
        by_callee[callee][caller] += n
    return by_callee


def attribute(counted, graph, entry_points, top_depth=6):
    """Calls into entry_points from outside the allocator, by the first non-wrapper caller (the
    callers of a wrapper share its calls as they share the calls into it in `graph`)."""
    by_callee = callers_of(graph)
    result = collections.Counter()
    total = 0

    def up(name, n, depth):
        if depth >= top_depth or not WRAPPER.search(name) or not by_callee.get(name):
            result[name] += n
            return
        callers = by_callee[name]
        into = sum(callers.values())
        if into <= 0:
            result[name] += n
            return
        for caller, k in callers.items():
            up(caller, n * k / into, depth + 1)

    for (caller, callee), n in counted.items():
        if callee in entry_points and not in_allocator(caller):
            total += n
            up(caller, n, 0)
    return total, result


def main():
    profile, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    graph = calls(profile)
    counted = collections.Counter(graph)
    if len(sys.argv) > 5:
        counted.subtract(calls(sys.argv[4]))
        requests -= int(sys.argv[5])
    allocs, by_caller = attribute(counted, graph, ALLOC)
    reallocs, _ = attribute(counted, graph, REALLOC)
    # A difference below zero: the shorter run grew something once that the longer did not; no
    # request reallocates.
    realloc_text = (
        f"**{reallocs / requests:.2f}** reallocations"
        if reallocs >= 0
        else f"no reallocations (the runs' difference is {reallocs / requests:.2f}: growth done once)"
    )
    print(
        f"**{allocs / requests:.2f}** heap allocations and {realloc_text} per request; what asks "
        "for the allocations:"
    )
    print()
    print("```")
    for name, count in by_caller.most_common(top):
        if count / requests < 0.005:
            break
        print(f"{count / requests:5.2f}  {(name or '?')[:110]}")
    print("```")


if __name__ == "__main__":
    main()
