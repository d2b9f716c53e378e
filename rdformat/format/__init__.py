"""Wire primitives, records and checksums of the .rdc container, dtypes and atomic files (no codecs)."""
