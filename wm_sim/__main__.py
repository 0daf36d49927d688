"""`python -m wm_sim` is the `wm-sim` command."""

from wm_sim.cli import main

raise SystemExit(main())
