"""How the file sources open a file, and how many rows they filter at a time: what a test may replace.

Both live in this module, below every other module of the package, and the
readers look them up here at each use. A test replaces them on the package
(``raystream.sources.files._open_file``), which forwards the new value here
(see ``_Package`` there): the readers then see it without importing the
package that imports them.
"""

from __future__ import annotations

import fsspec
import pyarrow as pa

from raystream._fs import to_arrow_fs

#: Rows taken from a file at a time when rows outside [start, end) are filtered out.
FILTER_CHUNK_ROWS = 64 * 1024


def open_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.NativeFile:
    """Open ``path`` for reading (random access, so that the bytes read can be told).

    Every open of a data file in this package, at plan time or by a reader,
    goes through here: a test counts the files opened by wrapping it.
    """
    return to_arrow_fs(fs).open_input_file(path)
