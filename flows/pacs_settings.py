"""Settings of a PACS pass, without Prefect imports (the CLI checks them before Prefect starts)."""

from __future__ import annotations

import os
from typing import Any, cast

from deconvseg.flows.inputs import BatchConfig
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.pacs.connection import Credentials


class PacsConfig(BatchConfig):
    """``BatchConfig`` plus the PACS side (``--config`` YAML overrides these).

    Attributes:
        http_timeout_s: connect/read timeout of each DICOMweb request.
    """

    dashboard_key: str = "deconvseg-pacs"
    http_timeout_s: float = 60.0


class PacsAuth(Settings):
    """Where the credentials are; never the secret itself.

    Attributes:
        user: HTTP basic user name.
        password_env: environment variable holding the password.
        token_env: environment variable holding a bearer token.
        secret_block: Prefect Secret block holding the password (with ``user``) or the token.
    """

    user: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    secret_block: str | None = None

    def credentials(self) -> Credentials:
        """Read the secret from its environment variable or Secret block.

        Raises:
            ConfigError: the variable is unset or the block cannot be loaded.
        """
        secret = None
        if name := self.password_env or self.token_env:
            secret = os.environ.get(name)
            if not secret:
                raise ConfigError(
                    f"environment variable {name} is unset or empty; export it with the "
                    f"{'password' if self.password_env else 'token'} (its value is never printed)"
                )
        elif self.secret_block:
            from prefect.blocks.system import Secret

            try:
                secret = cast(Secret, Secret.load(self.secret_block)).get()  # sync context: not a coroutine
            except ValueError as err:
                raise ConfigError(
                    f"Prefect Secret block {self.secret_block!r} not found; create it with "
                    "prefect.blocks.system.Secret(value=...).save(NAME)"
                ) from err
        if self.user is not None:
            return Credentials(user=self.user, password=secret)
        return Credentials(token=secret) if secret else Credentials()


class PacsRequest(Settings):
    """One PACS pass as the CLI asks for it (all JSON, no secret)."""

    url: str
    out: str
    model: str | None = None
    query: dict[str, Any] = {}
    auth: dict[str, Any] = {}
    config: dict[str, Any] = {}
    verify_tls: bool | str = True
    viewer_url: str | None = None
    deidentify: bool = False
    cron: str | None = None
    name: str = "pacs"
    print_json: bool = False

    def parameters(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "out": self.out,
            "model": self.model,
            "query": self.query,
            "auth": self.auth,
            "config": self.config,
            "verify_tls": self.verify_tls,
            "viewer_url": self.viewer_url,
            "deidentify": self.deidentify,
        }
