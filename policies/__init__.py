"""Policies: one small batched interface, and the scripted ones used to collect data."""
