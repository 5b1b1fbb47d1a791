"""User-facing errors: one line, naming where the problem is, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (data, config, paths). Printed as one line, exit code 2.

    `where` is a file path, optionally with a line number and a field or key name, e.g.
    ``UserError("missing field", path="data.jsonl", line=3, field="prompt")`` prints
    ``data.jsonl:3: field 'prompt': missing field``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        where = ": ".join(parts)
        text = " ".join(self.message.split())  # always one line
        return f"{where}: {text}" if where else text
