"""Two files define a source named `clicks`."""
