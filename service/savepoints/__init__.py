"""Savepoints: taking them across a group, their format's worker side, resuming, listing."""
