"""Superseded by `wm-sim bench suite=throughput+latency`; kept so the old command still works.

python benchmarks/env_speed.py [key=value ...]      # the same as wm-sim bench suite=throughput+latency
"""

import sys

from wm_sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "suite=throughput+latency", *sys.argv[1:]]))
