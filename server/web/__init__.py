"""The web pages served by the API: the labeling page and the dashboard."""
