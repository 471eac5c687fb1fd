#!/usr/bin/env python3
"""What N commands cost on this machine with nothing scheduling them: `sh
-c true` started with posix_spawn, at most PARALLEL at a time, by a loop
that does nothing else. The floor under W1 (502 commands, 32 at a time)
and under the daemon's minute (100 commands at once): no scheduler can
start them sooner than this on the same cores.

Usage: spawn_floor.py LABEL N PARALLEL [ROUNDS]. Prints one JSON line:
the medians over the rounds of the moment the last command was started
and the moment the last one ended, in ms from the first spawn."""
import json, os, statistics, sys, time

label, n, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
starts, ends = [], []
for _ in range(rounds):
    t0 = time.perf_counter()
    running, started, last_start, last_end = set(), 0, 0.0, 0.0
    while started < n or running:
        while started < n and len(running) < parallel:
            running.add(os.posix_spawn("/bin/sh", ["sh", "-c", "true"], os.environ))
            started += 1
            last_start = time.perf_counter() - t0
        pid, status = os.wait()
        if status != 0:
            sys.exit(f"sh -c true exited with status {status}")
        running.discard(pid)
        last_end = time.perf_counter() - t0
    starts.append(last_start * 1000)
    ends.append(last_end * 1000)
    time.sleep(0.3)
print(json.dumps({
    "label": label, "commands": n, "at_once": parallel, "rounds": rounds,
    "last_start_ms": round(statistics.median(starts), 1), "last_start_range_ms": [round(min(starts), 1), round(max(starts), 1)],
    "last_end_ms": round(statistics.median(ends), 1),
}))
