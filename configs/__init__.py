"""Hydra configs of the `wm-sim` verbs, packaged so `wm-sim` finds them wherever it is installed."""
