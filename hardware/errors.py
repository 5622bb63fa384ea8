"""The project's one error type for user mistakes.

Every bad input (unknown id, malformed file, impossible request) raises :class:`KvsimError`
with the offending place named, so the CLI can print one line and exit non-zero and the
dashboard can show it without a traceback. It lives in ``hardware`` because that package
imports nothing else of the project; every other package re-exports it.
"""

from __future__ import annotations


class KvsimError(Exception):
    """A user-facing error: what went wrong and where.

    ``source`` is a file path or catalog id, ``line`` a 1-based line number, ``field`` the
    offending key or column. ``str(err)`` renders ``source:line: field: message``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = str(self.source)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"
