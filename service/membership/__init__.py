"""The job's consumer group as workers see it: members, worker slots and their incarnations."""
