"""A source and a feature view are both named `clicks`."""
