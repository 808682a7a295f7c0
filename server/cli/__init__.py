"""The `artifact-loop` command line."""
