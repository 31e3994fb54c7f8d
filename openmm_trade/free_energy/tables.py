"""Result tables of the free-energy estimates: columns, rows and CSV files."""


from __future__ import annotations

import csv
import io
from dataclasses import fields

import numpy as np

from ..errors import InputError
from ..files import atomic_write_path


class _Table:
    """Mixin for result tables: ``columns()`` → ordered name → 1-D array."""

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def __len__(self) -> int:
        return len(next(iter(self.columns().values())))

    def as_rows(self) -> list[dict]:
        """One ``dict`` per row, plain Python values."""
        columns = {name: np.asarray(values).tolist() for name, values in self.columns().items()}
        return [{name: values[i] for name, values in columns.items()} for i in range(len(self))]

    def to_csv(self, path) -> str:
        """Write the table as CSV (atomically); returns the path as a string."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns()), lineterminator="\n")
        writer.writeheader()
        for row in self.as_rows():
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        with atomic_write_path(path) as tmp:
            tmp.write_text(buffer.getvalue())
        return str(path)

    @staticmethod
    def _read_csv_columns(path) -> dict[str, np.ndarray]:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise InputError(f"{path}: no rows to read")
        return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}

    @classmethod
    def from_csv(cls, path, **extra):
        """Read a table written by :meth:`to_csv`; ``extra`` sets non-column fields."""
        return cls(**cls._read_csv_columns(path), **extra)
