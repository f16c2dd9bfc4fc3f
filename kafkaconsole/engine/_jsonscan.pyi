"""The bulk JSON path's byte scan (_jsonscan.c, compiled at install where a C compiler is)."""

from typing import Any

def scan(
    values: list[bytes], key: bytes | None, want: bytes | None, max_total: int, /
) -> tuple[bytes, bytes | None] | None:
    """``(b"[" + b",".join(values) + b"]", flags)``, flags one byte per value (1 when its
    top-level ``key`` field, the last one written, is the string ``want``; None without a key),
    or None when the scan cannot vouch for the values' boundaries or the field's bytes."""

def runs(flags: bytes, first: int, /) -> list[tuple[int, int]]:
    """The runs of non-zero bytes in ``flags`` as inclusive ranges of ``first + index``."""

def size_bounds(records: list[Any], /) -> tuple[int, int]:
    """``(largest, smallest)`` ``serialized_value_size`` of ``records`` (-1 for a null value);
    ValueError when there are none."""
