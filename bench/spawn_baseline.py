#!/usr/bin/env python3
"""The cost of spawning `sh -c true` N times in a row, what a chain of N
shell tasks cannot avoid. Prints seconds per spawn."""
import subprocess, sys, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
t0 = time.perf_counter()
for _ in range(n):
    subprocess.run(["sh", "-c", "true"], check=True)
print(f"{(time.perf_counter() - t0) / n:.6f}")
