"""artifact-loop: the API service, its job pipeline, the CLI and the web pages."""
