#!/usr/bin/env python3
"""Runs a command and prints its wall time and peak RSS (of the command's
process tree, via RUSAGE_CHILDREN) as JSON: {"wall_s": ..., "rss_mb": ...}.
Usage: measure.py LABEL -- COMMAND..."""
import json, resource, subprocess, sys, time

label = sys.argv[1]
cmd = sys.argv[sys.argv.index("--") + 1:]
t0 = time.perf_counter()
proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - t0
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if proc.returncode != 0:
    sys.stderr.write(proc.stderr.decode(errors="replace")[-3000:])
    sys.exit(f"{label}: exit {proc.returncode}")
print(json.dumps({"label": label, "wall_s": round(wall, 3), "rss_mb": round(rss_kb / 1024, 1)}))
