"""A valid repository: sources by name, inline definitions, a subpackage, a definitions module."""
