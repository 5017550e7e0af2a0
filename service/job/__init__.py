"""What a user writes (the Job API) and how it becomes stages and tasks."""
