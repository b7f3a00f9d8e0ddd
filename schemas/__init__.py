"""nudgeflow's Avro contracts: one ``<Name>.avsc`` per record, plus their codec.

The .avsc files in this package are the public contract other teams code against; past
versions live in ``history/``. See README.md for the evolution rules. Use
:class:`schemas.codec.Codec` to encode and decode records.
"""

# first: ``schemas.codec`` is one of the compiled modules (udfs.native), whose finder ``import
# udfs`` installs; imported before it, every module would run as Python
import udfs  # noqa: F401, I001
from schemas.codec import (
    Codec,
    CodecError,
    MalformedRecordError,
    NotSingleObjectError,
    UnknownSchemaError,
    WrongSchemaError,
)

__all__ = [
    "Codec",
    "CodecError",
    "MalformedRecordError",
    "NotSingleObjectError",
    "UnknownSchemaError",
    "WrongSchemaError",
]
