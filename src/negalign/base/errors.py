"""User-facing errors: one line, naming where the problem is, exit code 2."""

from __future__ import annotations

from contextlib import contextmanager


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


@contextmanager
def located(where: str | None, field: str | None = None):
    """Give a UserError raised inside that names no file the config file `where`, its field under `field`.

    For parts that check a spec without knowing which config it came from (a generator, a scorer):
    inside `located("run.yaml", "critique.teacher")` a UserError for field 'model' comes out as
    "run.yaml: field 'critique.teacher.model': ...". Errors that name their own file pass unchanged.
    """
    try:
        yield
    except UserError as e:
        if e.path is not None or (where is None and field is None):
            raise
        key = f"{field}.{e.field}" if field and e.field else (field or e.field)
        raise UserError(e.message, path=where, line=e.line, field=key) from e
