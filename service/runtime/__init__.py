"""One worker at run time: its loop, its tasks and their operator chains."""
