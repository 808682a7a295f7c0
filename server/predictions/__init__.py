"""Dense predictions written back as webKnossos layers, their NML and report."""
