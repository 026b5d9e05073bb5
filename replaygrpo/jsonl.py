"""The one JSONL reader: errors name the file and the line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, what: str = "file", error: type[Exception] = ValueError,
               torn_tail_ok: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `path`.

    `torn_tail_ok` skips a malformed last line (a writer killed mid-line); anywhere else a
    malformed line, or a line that is not a JSON object, raises `error` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist.")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and lineno == len(lines):
                break
            raise error(f"{path}:{lineno}: malformed JSON line ({err.msg}).") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
        rows.append((lineno, obj))
    return rows
