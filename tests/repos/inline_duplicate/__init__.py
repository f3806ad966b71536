"""A view's inline source reuses the name of a different module-level source."""
