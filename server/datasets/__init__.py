"""Datasets: registering, listing and opening webKnossos datasets and their grids."""
