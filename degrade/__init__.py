"""degrade package."""
