"""What every benchmark script does with its result: print it as JSON, and write it to ``--out`` when given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: Any, out: Path | None, *also: tuple[Path | None, Any]) -> None:
    """Print ``result`` as indented JSON and write it to ``out`` (if set); ``also`` holds further
    (path, object) pairs written the same way without printing."""
    text = json.dumps(result, indent=2)
    print(text)
    for path, obj in ((out, result), *also):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj, indent=2) + "\n")
