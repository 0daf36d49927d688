"""Superseded by `wm-sim bench suite=roofline+memory`; kept so the old command still works.

python benchmarks/world_model_speed.py [key=value ...]   # the same as wm-sim bench suite=roofline+memory
"""

import sys

from wm_sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "suite=roofline+memory", *sys.argv[1:]]))
