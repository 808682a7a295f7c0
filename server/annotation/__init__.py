"""Annotation tasks: leasing, labelling, skipping; proposals and the audit set."""
