""" "Since the last successful run": the study date each PACS source was last fully processed.

One small JSON file per output folder (``<out>/.pacs-state.json``) maps a source (its URL
without credentials, and the query) to the day its last run that failed no case began.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from deconvseg.pipeline.files import atomic_file

STATE_FILE = ".pacs-state.json"


def source_key(url: str, query: dict) -> str:
    """The key of one source: its public URL and query (modality, description pattern)."""
    return hashlib.sha256(json.dumps({"url": url, "query": query}, sort_keys=True).encode()).hexdigest()[:16]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable state means "no previous run": the rerun check keeps it idempotent
    return data if isinstance(data, dict) else {}


def last_success(out_dir: Path, key: str) -> str | None:
    """``YYYYMMDD`` of the day the source's last successful run began, or ``None``."""
    entry = _read(out_dir / STATE_FILE).get(key) or {}
    return entry.get("since")


def record_success(out_dir: Path, key: str, url: str, started: dt.datetime) -> None:
    """Remember that the run of ``key`` that began at ``started`` failed no case.

    The next run asks for studies from that day on (a study that arrived later that day is
    found again; the rerun check skips what is already done).
    """
    path = out_dir / STATE_FILE
    data = _read(path)
    data[key] = {"url": url, "since": started.strftime("%Y%m%d"), "finished": dt.datetime.now().isoformat()}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
