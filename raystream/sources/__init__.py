"""Sources: where rows come from, cut into splits that reader actors read (the functions that make streams of
them, such as ``rs.read_parquet``, are in :mod:`raystream.readers`)."""
