"""Nexmark, the streaming benchmark of an online auction, on raystream and on DuckDB.

- ``python -m bench.nexmark.generate``: write the events to Parquet, or produce them to Kafka.
- ``python -m bench.nexmark``: run the queries (q0, q1, q2, q5, w1, w2) on both and compare.
- :mod:`bench.nexmark.queries`: the queries as raystream pipelines and as SQL.

The events themselves come from ``rs.datagen``, which follows the Nexmark generator.
"""
