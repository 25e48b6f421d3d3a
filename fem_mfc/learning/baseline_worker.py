"""One baseline run in its own process (:func:`fem_mfc.learning.baseline.train_all`): reads a
pickled job ``{kind, seed, args, kw}`` from standard input, writes the pickled result of
:func:`~fem_mfc.learning.baseline.train_baseline` to standard output."""
import pickle
import sys

from fem_mfc.learning.baseline import train_baseline


def main() -> None:
    job = pickle.load(sys.stdin.buffer)
    out = train_baseline(job["kind"], *job["args"], seed=job["seed"], **job["kw"])
    sys.stdout.buffer.write(pickle.dumps(out))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
