"""webKnossos: the library wrapper, remote datasets and the task/annotation sync."""
