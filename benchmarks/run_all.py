"""Run every benchmark script of this folder (serially; each prints its own table).

    bin/fem-env python3 benchmarks/run_all.py [--quick]

``--quick`` reaches the scripts that have that option (smaller sizes); the others run as they
are.  Benchmarks print figures (DOF·steps/s, iterations, peak memory, 1 vs 2 ranks); they are never
timed tests.  Timings on shared 2-core machines are noisy: compare ratios within one run.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        args = sys.argv[1:]
        if '"--quick"' not in script.read_text():
            args = [a for a in args if a != "--quick"]
        rc = subprocess.call([sys.executable, str(script), *args])
        if rc:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed))
        sys.exit(1)
