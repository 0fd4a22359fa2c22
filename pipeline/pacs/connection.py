"""A DICOMweb client with credentials, TLS verification and errors translated to ``PacsError``.

Credentials arrive as values (the flows read them from an environment variable or a Prefect
Secret block); they live only inside a ``requests`` auth object, are never part of a ``repr``, an
exception message or a log line, and TLS certificates are verified unless the caller says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient

from deconvseg.pipeline.pacs.errors import PacsError

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_FIXES = {
    401: "check the user name and password or token (--user, --password-env, --token-env)",
    403: "ask the PACS administrator for query/retrieve/store rights",
    404: "check --url: it must be the DICOMweb root (Orthanc: http://host:8042/dicom-web)",
}


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (``user`` and ``password``) or bearer (``token``) credentials, or none.

    The secret fields are excluded from ``repr`` so that a logged or printed object shows no secret.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def auth(self) -> requests.auth.AuthBase | None:
        """The ``requests`` auth object, or ``None`` without credentials."""
        if self.token:
            return _Bearer(self.token)
        if self.user is not None:
            return requests.auth.HTTPBasicAuth(self.user, self.password or "")
        return None


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` added when the request is sent (not in any logged header dict)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def public_url(url: str) -> str:
    """``url`` without user info (``https://user:pw@host`` -> ``https://host``), for messages and keys."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl().rstrip("/")


def connect(
    url: str, credentials: Credentials = Credentials(), *, verify_tls: bool | str = True, timeout_s: float = 30.0
) -> DICOMwebClient:
    """A DICOMweb client for ``url`` (the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``).

    Args:
        url: DICOMweb root; user info in the URL is refused (it would end up in logs).
        credentials: basic or bearer credentials.
        verify_tls: verify the server's certificate (``True``), or a CA bundle path; ``False``
            only for a test server.
        timeout_s: connect and read timeout of each request.

    Raises:
        PacsError: the URL is not http(s) or carries credentials.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(
            public_url(url),
            "not an http(s) URL",
            "pass the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web",
            transient=False,
        )
    if parts.username or parts.password:
        raise PacsError(
            public_url(url),
            "the URL carries credentials",
            "pass --user and --password-env (or --token-env) instead",
            transient=False,
        )
    session = requests.Session()
    session.auth = credentials.auth()
    session.verify = verify_tls
    session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the caller's back
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout_s)
    client.set_http_retry_params(retry=False)  # retries are the flow's business (transient errors only)
    return client


@contextmanager
def translated(url: str, action: str) -> Iterator[None]:
    """Turn ``requests`` failures during ``action`` into ``PacsError`` (transient or not)."""
    where = public_url(url)
    try:
        yield
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        transient = status in TRANSIENT_STATUS
        fix = _FIXES.get(status, "retry later" if transient else "check the request and the PACS logs")
        raise PacsError(where, f"{action} refused (HTTP {status})", fix, transient=transient) from err
    except requests.exceptions.SSLError as err:
        raise PacsError(
            where,
            f"{action}: TLS certificate not trusted ({type(err).__name__})",
            "install the PACS's CA certificate or pass --ca-bundle FILE",
            transient=False,
        ) from err
    except (requests.ConnectionError, requests.Timeout) as err:
        kind = "timed out" if isinstance(err, requests.Timeout) else "cannot connect"
        raise PacsError(
            where, f"{action}: {kind}", "check that the PACS is running and reachable at --url", transient=True
        ) from err
