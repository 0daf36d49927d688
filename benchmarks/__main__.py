"""`python -m wm_sim.benchmarks key=value ...` is `wm-sim bench key=value ...`."""

import sys

from wm_sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
