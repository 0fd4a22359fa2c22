"""The one error a PACS exchange raises: what went wrong, whether retrying may help, and the fix."""

from __future__ import annotations

from deconvseg.pipeline.errors import DeconvsegError


class PacsError(DeconvsegError):
    """A DICOMweb exchange failed.

    Args:
        url: the PACS endpoint (never carries credentials).
        problem: what went wrong, in a few words.
        fix: what the user can do about it.
        transient: True when a retry may succeed (connection refused or reset, timeouts,
            HTTP 408/429/5xx); False for refusals that a retry repeats (401/403/404/400).
    """

    def __init__(self, url: str, problem: str, fix: str, *, transient: bool) -> None:
        self.url, self.problem, self.fix, self.transient = url, problem, fix, transient
        super().__init__(f"{url}: {problem}; {fix}".replace("\n", " "))
