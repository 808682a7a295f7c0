"""``python -m server.acquisition``: the README's table of strategies, from the registry."""

from server.acquisition.registry import docs_table

print(docs_table(), end="")
