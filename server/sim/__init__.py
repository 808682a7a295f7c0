"""Synthetic data, the offline simulation and the demo; never imported by the service."""
