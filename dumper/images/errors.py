"""The one error every image reader raises: which file, what is wrong, where."""

from __future__ import annotations

import os


class ImageError(Exception):
    """A malformed, inconsistent or missing image. str(): `FILE: what is wrong (at offset N)`."""

    def __init__(self, path: str | os.PathLike[str], message: str, offset: int | None = None):
        super().__init__(str(path), message, offset)
        self.path = str(path)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        where = f" (at offset {self.offset})" if self.offset is not None else ""
        return f"{self.path}: {self.message}{where}"
