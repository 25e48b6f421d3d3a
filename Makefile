# fem_mfc: the two commands of the README.  Both set everything up on a fresh machine
# (bin/fem-env builds the Debian 13 environment once when DOLFINx 0.9 is not importable).
#   make demo       -- the flagship demo (two moons trained by mean-field control) -> results/demo/
#   make test       -- the whole test suite, serial and under mpirun -n 2 (what CI runs)
#   make test-fast  -- everyday tier: no slow tests, then a small MPI subset (< 2 min)
#   make lint       -- ruff (not in the environment: uses a ruff on PATH, e.g. pip install ruff)
ENV := bin/fem-env
PYTEST := python3 -m pytest -p no:cacheprovider --color=no --durations=15
NP ?= 2
# the MPI tests of test-fast: quick ones that cover the platform, Newton and the learning runner
FAST_MPI := tests/test_platform_mpi.py tests/test_hjb_fp_mpi.py tests/test_reliability_mpi.py

.PHONY: demo test test-serial test-serial-one test-mpi test-fast lint env bench bench-matrix bench-scaling bench-comparison docs

demo:
	$(ENV) python3 demos/demo_moons.py --out results/demo

test: test-serial test-mpi

# the serial suite as two shards side by side (one per core; FEM_MFC_SHARD in tests/conftest.py),
# the second's output printed after the first's; fails if either fails
test-serial:
	$(ENV) sh -c 'log=$$(mktemp); \
	  FEM_MFC_SHARD=1/2 $(PYTEST) -q tests > $$log 2>&1 & pid=$$!; \
	  FEM_MFC_SHARD=0/2 $(PYTEST) -q tests; a=$$?; wait $$pid; b=$$?; \
	  echo "== second shard"; cat $$log; rm -f $$log; [ $$a -eq 0 ] && [ $$b -eq 0 ]'

test-serial-one:
	$(ENV) $(PYTEST) -q tests

test-mpi:
	$(ENV) mpirun -n $(NP) $(PYTEST) -q --with-mpi -m mpi tests

test-fast:
	$(ENV) sh -c 'log=$$(mktemp); \
	  FEM_MFC_SHARD=1/2 $(PYTEST) -q -m "not slow and not mpi" tests > $$log 2>&1 & pid=$$!; \
	  FEM_MFC_SHARD=0/2 $(PYTEST) -q -m "not slow and not mpi" tests; a=$$?; wait $$pid; b=$$?; \
	  echo "== second shard"; cat $$log; rm -f $$log; [ $$a -eq 0 ] && [ $$b -eq 0 ]'
	$(ENV) mpirun -n $(NP) $(PYTEST) -q --with-mpi -m "mpi and not slow" $(FAST_MPI)

lint:
	@command -v ruff >/dev/null || { echo "make lint: ruff not found (pip install ruff)"; exit 2; }
	ruff check .

env:
	$(ENV) python3 -m fem_mfc info

docs:
	$(ENV) python3 -m fem_mfc schema > docs/config.md

bench:
	$(ENV) python3 benchmarks/run_all.py

bench-matrix:
	$(ENV) python3 benchmarks/bench_matrix.py --out results/bench_matrix

bench-scaling:
	$(ENV) python3 benchmarks/bench_scaling.py --out results/bench_scaling

# the fair comparison table of the classifier (issue 13): PDE network vs converged torch
# ResNet / neural ODE over seeds, Bayes ceiling, 7 data sets (~37 min on 2 cores; --quick: 1 min)
bench-comparison:
	$(ENV) python3 benchmarks/bench_comparison.py --out results/bench_comparison
