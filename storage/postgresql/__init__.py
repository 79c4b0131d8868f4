"""``postgresql://``: the PostgreSQL storage backend (psycopg 3 and psycopg-pool).

See :mod:`storage.postgresql._storage` for the design, ``docs/storage.md`` for
the URL options and the schema, ``docs/operations.md`` for running it.
"""

from ._notify import Changes, EphemeralCopy
from ._schema import LATEST as SCHEMA_VERSION
from ._schema import SchemaError
from ._storage import PostgresStorage
from ._url import DEFAULT_SCHEMA, split_url

__all__ = ["Changes", "DEFAULT_SCHEMA", "EphemeralCopy", "SCHEMA_VERSION", "PostgresStorage", "SchemaError", "split_url"]
