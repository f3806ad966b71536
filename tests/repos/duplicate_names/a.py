from featureplane import BatchSource

clicks = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")
