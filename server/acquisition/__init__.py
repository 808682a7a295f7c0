"""Acquisition: the one registry of strategies that choose which patches people label next."""
