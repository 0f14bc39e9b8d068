"""The running service's address book, so `flowtide status` finds what `flowtide up` started."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE_ENV = "FLOWTIDE_STATE_FILE"


def state_file() -> Path:
    default = Path(os.environ.get("FLOWTIDE_CACHE_DIR", Path.home() / ".cache" / "flowtide")) / "run.json"
    return Path(os.environ.get(STATE_FILE_ENV, default))


@dataclass(frozen=True)
class RunState:
    ray_address: str
    endpoint: str
    app_name: str
    pid: int


def save(state: RunState) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, path)


def load() -> RunState | None:
    try:
        return RunState(**json.loads(state_file().read_text()))
    except FileNotFoundError:
        return None


def clear(pid: int) -> None:
    current = load()
    if current is not None and current.pid == pid:
        state_file().unlink(missing_ok=True)
