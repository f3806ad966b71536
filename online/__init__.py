"""Online serving: Lambda-style handler, local HTTP server, client. No Spark, no Dagster."""
