from featureplane import BatchSource

page_views = BatchSource("page_views", path="raw/page_views", timestamp_field="ts")
clicks = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")
