"""Pixels: the patch grid and reading normalised patches from webKnossos layers."""
