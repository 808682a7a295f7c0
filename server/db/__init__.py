"""Database schema and session handling."""
