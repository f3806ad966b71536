from featureplane import BatchSource

# A copy-pasted definition, pointing somewhere else.
clicks_v2 = BatchSource("clicks", path="raw/clicks_v2", timestamp_field="ts")
