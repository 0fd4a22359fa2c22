"""The output folder of a batch: one batch at a time, and no half-written bundle survives a crash.

``deconvseg.pipeline.export.bundle.write_bundle`` writes ``<out>/<case>`` through the hidden siblings
``.<case>.tmp-*`` (the bundle being written) and ``.<case>.old-*`` (the previous bundle while it
is swapped out). A process killed with SIGKILL leaves them behind; the next batch removes them
for its cases before it starts, holding ``<out>/.deconvseg-batch.lock`` (an advisory ``flock``
that the kernel releases when its holder dies) so it never sweeps a live run's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from deconvseg.pipeline.errors import ResourceError

LOCK_NAME = ".deconvseg-batch.lock"


@contextlib.contextmanager
def batch_lock(out_dir: Path) -> Iterator[None]:
    """Hold the output folder's batch lock for the duration of the block.

    Raises:
        ResourceError: another batch is writing into the same folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ResourceError(
                f"{out_dir}: another batch is writing into this folder; wait for it to finish or choose another --out"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep_partial(out_dir: Path, case_ids: Iterable[str]) -> list[Path]:
    """Remove what a killed run left half-written (bundles of these cases, ``batch.json``); the paths removed."""
    removed = []
    patterns = [".tmp-*.json"] + [p for c in case_ids for p in (f".{c}.tmp-*", f".{c}.old-*")]
    for leftover in (path for pattern in patterns for path in out_dir.glob(pattern)):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
