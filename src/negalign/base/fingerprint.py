"""Content hashes that key caches and pin the settings a run-directory file was made with."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(obj: Any) -> str:
    """Content hash of any JSON-serialisable object (data sets, configs, token ids)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
