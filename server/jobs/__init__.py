"""Jobs: the registry of job kinds, their queues, and the one writer of job state."""
