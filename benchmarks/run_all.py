"""Run every benchmark script of this folder (serially; each prints its own table).

    bin/fem-env python3 benchmarks/run_all.py [--quick]

``--quick`` reaches the scripts that have that option (smaller sizes); the others run as they
are.  Benchmarks print figures (DOF·steps/s, iterations, peak memory, 1 vs 2 ranks); they are never
timed tests.  Timings on shared 2-core machines are noisy: compare ratios within one run.
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    # its own options only (--help went on to every script, each printing its own help)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smaller sizes, for the scripts that have that option")
    quick = ap.parse_args().quick
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        args = ["--quick"] if quick and '"--quick"' in script.read_text() else []
        rc = subprocess.call([sys.executable, str(script), *args])
        if rc:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed))
        sys.exit(1)
