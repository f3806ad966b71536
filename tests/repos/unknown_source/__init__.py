"""A view names a source that no module defines."""
