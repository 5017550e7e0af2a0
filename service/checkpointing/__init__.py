"""The life of a checkpoint and the way back to one after a failure."""
