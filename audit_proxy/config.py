"""The proxy's settings: one typed model, read from an optional TOML file, overridden by flags.

A config file holds top-level keys named like the fields of `ProxyConfig`, for example::

    host = "0.0.0.0"
    port = 8080
    upstream_url = "http://vllm.internal:8000"
    upstream_api_key_file = "/etc/bastion/upstream.key"
    data_dir = "/var/lib/bastion"
    connect_timeout_s = 5
    read_timeout_s = 300

The upstream service key comes, first match wins, from the environment variable
`BASTION_UPSTREAM_API_KEY`, from `upstream_api_key_file`, or from `upstream_api_key`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from audit_proxy.busy_poll import DEFAULT_MAX_US, MAX_WINDOW_US
from audit_proxy.shared_limits import DEFAULT_SYNC_S
from audit_proxy.siem import parse_syslog_url

UPSTREAM_KEY_ENV = "BASTION_UPSTREAM_API_KEY"
STORE_PASSWORD_ENV = "BASTION_STORE_PASSWORD"  # noqa: S105 (a variable's name)
HOME_ENV = "BASTION_HOME"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and what to do."""


def default_data_dir() -> Path:
    """`$BASTION_HOME`, or `~/.bastion`."""
    home = os.environ.get(HOME_ENV)
    return Path(home) if home else Path.home() / ".bastion"


class ProxyConfig(BaseModel):
    """Everything `bastion proxy` needs to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    upstream_url: str = "http://127.0.0.1:8000"
    upstream_api_key: SecretStr | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    upstream_max_connections: int = Field(default=256, ge=1)
    # A policy TOML file (see audit_proxy.policy.rules); None = the built-in default policy.
    policy_file: Path | None = None
    # A roles TOML file (see audit_proxy.roles); None = `roles.toml` in data_dir if it exists,
    # else the built-in roles (every role may do everything, `admin` also the admin routes).
    roles_file: Path | None = None
    # What a committed audit record survives: "process" = a crash or kill -9 of the proxy (WAL,
    # synchronous=NORMAL); "fsync" = power loss too (each group commit is fsynced before any
    # caller goes on).
    durability: Literal["process", "fsync"] = "process"
    # `suffix` on /v1/completions: model name -> FIM template (see audit_proxy.fim_suffix);
    # models not named here are identified by their tokenizer.
    fim_templates: dict[str, str] = Field(default_factory=dict)
    # SIEM export of every audit-log leaf (no payloads): a JSONL file ("-" = stdout) and/or
    # syslog RFC 5424 at udp://, tcp://, tls:// (RFC 5425), relp:// or relp+tls://HOST:PORT.
    # For the TLS ones: the CA bundle that vouches for the collector (beside the system's), and
    # the proxy's own certificate chain and key for a collector that asks for one (PEM).
    siem_jsonl_path: Path | None = None
    siem_syslog_url: str | None = None
    siem_syslog_ca_file: Path | None = None
    siem_syslog_certfile: Path | None = None
    siem_syslog_keyfile: Path | None = None
    siem_max_backoff_s: float = Field(default=30.0, gt=0)
    # TLS: the listener's certificate chain and key (PEM), and the CA bundle for an https upstream.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    upstream_ca_file: Path | None = None
    # The audit store: None = SQLite in data_dir; "postgresql://USER@HOST:PORT/DB" = a database
    # several replicas share. Its password, first match wins: $BASTION_STORE_PASSWORD,
    # `store_password_file`, `store_password`, the URL.
    store_url: str | None = None
    store_password: SecretStr | None = None
    # With store_url, how often replicas exchange what their users took, so that a rate limit
    # holds across all of them (see audit_proxy.shared_limits).
    rate_limit_sync_s: float = Field(default=DEFAULT_SYNC_S, gt=0, le=60)
    # The longest the event loop polls instead of sleeping after a request comes in or a
    # response ends, when the next I/O has been coming that soon (see audit_proxy.busy_poll):
    # less latency on a VM, for CPU while it does. 0 = off.
    busy_poll_us: int = Field(default=DEFAULT_MAX_US, ge=0, le=MAX_WINDOW_US)

    @field_validator("store_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        # The message must not echo the URL: it may hold a password.
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://USER@HOST:PORT/DATABASE URL")
        return value or None

    @field_validator("fim_templates")
    @classmethod
    def _known_templates(cls, value: dict[str, str]) -> dict[str, str]:
        # Imported here: the FIM layer pulls in the model client, which config readers don't need.
        from audit_proxy.fim_suffix import template_named

        for model, name in value.items():
            try:
                template_named(name)
            except ValueError as exc:
                raise ValueError(f"model {model!r}: {exc}") from None
        return value

    @field_validator("siem_syslog_url")
    @classmethod
    def _syslog_url(cls, value: str | None) -> str | None:
        if value:
            parse_syslog_url(value)
        return value or None

    @field_validator("upstream_url")
    @classmethod
    def _root_url(cls, value: str) -> str:
        # The proxy appends the client's path (/v1/completions, /tokenize), so it wants the
        # server's root; people often paste the OpenAI base URL ending in /v1.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        value = value.rstrip("/")
        return value.removesuffix("/v1")

    @property
    def audit_db(self) -> Path:
        return self.data_dir / "audit.sqlite3"

    @property
    def keys_db(self) -> Path:
        return self.data_dir / "keys.sqlite3"


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Read the TOML file (if any), apply the environment and the overrides (None = not given)."""
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "command line"
    values: dict[str, Any] = {}
    if path is not None:
        values = read_toml(path, "config", "pass an existing file to --config or leave it out")
    if "upstream_api_key_file" in values:
        key_file = values.pop("upstream_api_key_file")
        if "upstream_api_key" in values:
            raise ConfigError(
                f"{source}: both upstream_api_key and upstream_api_key_file are set; "
                "keep one of them (the file is the safer place for a secret)."
            )
        values["upstream_api_key"] = _read_key_file(source, key_file)
    env_key = environ.get(UPSTREAM_KEY_ENV)
    if env_key:
        values["upstream_api_key"] = env_key.strip()
    _store_password(source, values, environ)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ProxyConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(source, exc)) from None


def read_toml(
    path: Path, kind: str, if_missing: str, error: type[Exception] = ConfigError
) -> dict[str, Any]:
    """A TOML file's table; `error` names the file and what to do when it cannot be read."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found; {if_missing}.") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {kind} file: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc}); fix the syntax.") from None


def _read_key_file(source: str, key_file: object) -> str:
    if not isinstance(key_file, str):
        raise ConfigError(f"{source}: upstream_api_key_file must be a path string.")
    try:
        key = Path(key_file).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{source}: upstream_api_key_file: cannot read {key_file} ({exc.strerror}); "
            "point it at a readable file holding the model server's key."
        ) from None
    if not key:
        raise ConfigError(f"{source}: upstream_api_key_file: {key_file} is empty.")
    return key


def _store_password(source: str, values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Put the audit database's password, from the environment or a file, in `values`."""
    if "store_password_file" in values:
        path = values.pop("store_password_file")
        if "store_password" in values:
            raise ConfigError(
                f"{source}: both store_password and store_password_file are set; keep one "
                "of them (the file is the safer place for a secret)."
            )
        if not isinstance(path, str):
            raise ConfigError(f"{source}: store_password_file must be a path string.")
        try:
            password = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{source}: store_password_file: cannot read {path} ({exc.strerror}); point "
                "it at a readable file holding the audit database's password."
            ) from None
        if not password:
            raise ConfigError(f"{source}: store_password_file: {path} is empty.")
        values["store_password"] = password
    env_password = environ.get(STORE_PASSWORD_ENV)
    if env_password:
        values["store_password"] = env_password.strip()


def _explain(source: str, exc: ValidationError) -> str:
    fields = sorted(ProxyConfig.model_fields)
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown key {key!r}; remove it or use one of: "
                f"{', '.join([*fields, 'upstream_api_key_file', 'store_password_file'])}."
            )
        elif key in ("upstream_api_key", "store_password"):
            lines.append(f"{source}: {key}: {error['msg']}; set it to a string.")
        elif key == "store_url":
            # Never echo the value: a URL may carry a password.
            lines.append(f"{source}: store_url: {error['msg']}.")
        else:
            lines.append(
                f"{source}: {key}: {error['msg']} (got {error.get('input')!r}); fix the value "
                "or remove the key to use the default."
            )
    return "\n".join(lines)
