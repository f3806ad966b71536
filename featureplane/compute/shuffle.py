"""Hash partitioning on join keys into `spark.sql.shuffle.partitions` partitions.

`DataFrame.repartition(*keys)` means that many partitions on Spark, but on Sail it keeps the
input's partition count: one per file scanned, summed over a union. A shuffle's buffers grow
with inputs x outputs, so a union with a table of many small files made every later shuffle
wide: the demo's training data (280k spine rows) took 9 GiB and 30 s that way, 1 GiB and 6 s
with 4 partitions. Naming the count makes both engines do the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame

PARTITIONS = "spark.sql.shuffle.partitions"
SPARK_DEFAULT = 200


def by_keys(rows: DataFrame, keys: Sequence[str]) -> DataFrame:
    """`rows` hash-partitioned on `keys` into the session's shuffle partitions."""
    count = rows.sparkSession.conf.get(PARTITIONS, str(SPARK_DEFAULT))
    return rows.repartition(int(count or SPARK_DEFAULT), *keys)
