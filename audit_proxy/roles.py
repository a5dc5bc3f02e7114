"""Roles: what each user may do, read from a TOML file, checked at start and on every change.

A roles file looks like this::

    [roles.user]                      # every key's role unless mapped below
    models = ["*"]                    # names or globs; "*" = any model
    features = ["completion", "chat", "action", "tokenize", "other"]

    [roles.intern]
    models = ["qwen2.5-coder-*"]
    features = ["completion"]
    max_tokens = 512                  # largest max_tokens a request may ask for
    requests_per_minute = 30          # token bucket per user: refill rate ...
    request_burst = 5                 # ... and size (default: requests_per_minute)
    tokens_per_minute = 20000         # prompt + completion tokens
    token_burst = 4000                # default: tokens_per_minute

    [roles.auditor]
    features = []
    admin = true                      # the admin routes: /v1/audit/*, /metrics

    [users]
    alice = "auditor"                 # key name -> role

    [groups.interns]
    members = ["bob", "carol"]
    role = "intern"

A key's role is its user's entry in `[users]`, else the role of the group that names the user,
else the role the key was issued with. Without a roles file the built-in defaults apply: every
role may use every feature and model, and `admin` may also use the admin routes.

Models, max_tokens and the rate limits are enforced on what the request asks for. Features
are not a security boundary: the feature is the `X-Bastion-Feature` tag the language server
sends, and a user who calls the proxy with their key directly can put any tag there (chat,
completion and action all use the same two OpenAI routes). They keep an editor's features
apart for users who use the editor; to keep a model from a user, limit `models`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit_proxy.config import ConfigError, read_toml
from audit_proxy.keys import ROLE_NAME, KeyInfo, Principal

Feature = Literal["completion", "chat", "action", "tokenize", "other"]
FEATURES: tuple[Feature, ...] = get_args(Feature)
ROLES_FILE_NAME = "roles.toml"


class RolesError(ConfigError):
    """The roles file cannot be used; the message names the file, the key and what to do."""


class Role(BaseModel):
    """What one role may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[str, ...] = ("*",)
    features: tuple[Feature, ...] = FEATURES
    max_tokens: int | None = Field(default=None, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    request_burst: int | None = Field(default=None, ge=1)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    token_burst: int | None = Field(default=None, ge=1)
    admin: bool = False

    @field_validator("models")
    @classmethod
    def _model_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern or pattern != pattern.strip():
                raise ValueError("model names and globs must be non-empty, without edge spaces")
        return value

    @model_validator(mode="after")
    def _bursts_need_rates(self) -> Role:
        if self.request_burst is not None and self.requests_per_minute is None:
            raise ValueError("request_burst needs requests_per_minute; set both or neither")
        if self.token_burst is not None and self.tokens_per_minute is None:
            raise ValueError("token_burst needs tokens_per_minute; set both or neither")
        return self

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def any_model(self) -> bool:
        return "*" in self.models

    def summary(self) -> str:
        """One line for `bastion roles check`."""
        parts = [
            f"models={','.join(self.models) or '(none)'}",
            f"features={','.join(self.features) or '(none)'}",
        ]
        if self.max_tokens is not None:
            parts.append(f"max_tokens={self.max_tokens}")
        if self.requests_per_minute is not None:
            parts.append(f"rpm={self.requests_per_minute:g} burst={self.request_burst or '-'}")
        if self.tokens_per_minute is not None:
            parts.append(f"tpm={self.tokens_per_minute:g} burst={self.token_burst or '-'}")
        if self.admin:
            parts.append("admin")
        return " ".join(parts)


class Group(BaseModel):
    """Users who share a role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: tuple[str, ...]
    role: str


class RolesFile(BaseModel):
    """The roles file as written: roles, and who has which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[str, Role]
    users: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, Role]) -> dict[str, Role]:
        for name in value:
            if not ROLE_NAME.fullmatch(name):
                raise ValueError(
                    f"role name {name!r} is not valid; use lower-case letters, digits, '-' or "
                    "'_', starting with a letter (as 'bastion keys create --role' does)"
                )
        return value


class RoleBook(Protocol):
    """What the layers ask of the roles in force (`Roles`, or `LiveRoles` that follow a file)."""

    @property
    def source(self) -> str: ...

    def role_of(self, principal: Principal) -> str: ...

    def get(self, name: str) -> Role | None: ...


class Roles:
    """The roles in force: resolves a principal to its effective role."""

    def __init__(
        self,
        roles: dict[str, Role],
        user_roles: dict[str, str],
        fallback: Role | None,
        source: str,
        mapped_by: dict[str, str] | None = None,
    ) -> None:
        self.roles = roles
        self.user_roles = user_roles
        # user -> where the file maps them ("users" or "groups.NAME"), for `describe`.
        self.mapped_by = mapped_by or {}
        # Without a roles file an unknown role keeps today's behaviour: it is a plain user.
        self.fallback = fallback
        self.source = source

    def role_of(self, principal: Principal) -> str:
        """The name of the principal's effective role."""
        return self.user_roles.get(principal.name, principal.role)

    def get(self, name: str) -> Role | None:
        """The role of this name, or None when it is not defined (nor covered by the defaults)."""
        role = self.roles.get(name)
        return role if role is not None else self.fallback

    def describe(self, keys: Iterable[KeyInfo] | None = None) -> list[str]:
        """The effective mapping, as `bastion roles check` prints it."""
        lines = [f"roles ({self.source}):"]
        lines += [f"  {name}: {role.summary()}" for name, role in sorted(self.roles.items())]
        lines.append("users:")
        lines += [
            f"  {user} -> {role}  (from {self.mapped_by.get(user, 'users')})"
            for user, role in sorted(self.user_roles.items())
        ] or ["  (none named: every key keeps the role it was issued with)"]
        if keys is not None:
            lines.append("keys:")
            for info in keys:
                role = self.role_of(Principal(name=info.name, role=info.role))
                state = "active" if info.active() else "inactive"
                undefined = "  UNDEFINED ROLE" if self.get(role) is None else ""
                lines.append(f"  {info.name} -> {role}  ({state}){undefined}")
        return lines

    def check_keys(self, keys: Iterable[KeyInfo]) -> None:
        """Refuse to start when an active key would end up with an undefined role."""
        effective = (
            (info.name, self.role_of(Principal(name=info.name, role=info.role)))
            for info in keys
            if info.active()
        )
        missing = [
            f"{name!r} (role {role!r})" for name, role in effective if self.get(role) is None
        ]
        if missing:
            raise RolesError(
                f"{self.source}: active keys have roles the file does not define: "
                f"{', '.join(missing)}; add those roles under [roles], map the users to a "
                "defined role under [users] or [groups], or revoke the keys"
            )


BUILTIN_ROLES = Roles(
    {"user": Role(), "admin": Role(admin=True)}, {}, fallback=Role(), source="built-in roles"
)


def load_roles(path: Path) -> Roles:
    """Read and check a roles file; raises `RolesError` naming the file and the key path."""
    raw = read_toml(path, "roles", "create it or point roles_file at an existing file", RolesError)
    return parse_roles(raw, str(path))


def parse_roles(raw: dict[str, Any], source: str) -> Roles:
    """Check the parsed TOML of a roles file; `source` names it in errors."""
    try:
        spec = RolesFile.model_validate(raw)
    except ValidationError as exc:
        raise RolesError(_explain(source, exc)) from None
    problems: list[str] = []

    def need(role: str, where: str) -> None:
        if role not in spec.roles:
            problems.append(
                f"{source}: {where}: role {role!r} is not defined; add [roles.{role}] "
                f"or use one of: {', '.join(sorted(spec.roles)) or '(none defined)'}"
            )

    user_roles: dict[str, str] = {}
    mapped_by: dict[str, str] = {}
    via_group: dict[str, str] = {}
    for group_name, group in spec.groups.items():
        need(group.role, f"groups.{group_name}.role")
        for index, member in enumerate(group.members):
            earlier = via_group.get(member)
            if earlier is not None and spec.groups[earlier].role != group.role:
                problems.append(
                    f"{source}: groups.{group_name}.members[{index}]: {member!r} is also in "
                    f"group {earlier!r} with role {spec.groups[earlier].role!r}; a user gets one "
                    "role: remove them from one group or name their role under [users]"
                )
            via_group.setdefault(member, group_name)
            user_roles.setdefault(member, group.role)
            mapped_by.setdefault(member, f"groups.{group_name}")
    for user, role in spec.users.items():
        need(role, f"users.{_key(user)}")
        user_roles[user] = role  # [users] wins over groups
        mapped_by[user] = "users"
    if problems:
        raise RolesError("\n".join(problems))
    return Roles(dict(spec.roles), user_roles, fallback=None, source=source, mapped_by=mapped_by)


def resolve_roles_file(roles_file: Path | None, data_dir: Path) -> Path | None:
    """The roles file in force: the configured one, else `roles.toml` in the data dir if present."""
    if roles_file is not None:
        return roles_file
    default = data_dir / ROLES_FILE_NAME
    try:
        return default if default.exists() else None
    except OSError as exc:
        raise RolesError(
            f"{default}: cannot tell whether a roles file is there ({exc.strerror}); make "
            f"{data_dir} readable by the proxy's account or set roles_file"
        ) from None


def roles_for(roles_file: Path | None, data_dir: Path) -> Roles:
    """The roles in force for a proxy with this `roles_file` and data dir."""
    path = resolve_roles_file(roles_file, data_dir)
    return load_roles(path) if path is not None else BUILTIN_ROLES


def _key(part: object) -> str:
    text = str(part)
    return text if text.replace("_", "").replace("-", "").isalnum() else f'"{text}"'


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(part)
    return out or "(top level)"


def _explain(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        # Pydantic adds the validator's name for model-level checks; it is no key of the file.
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("_")))
        where = _path(loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown key; remove it or check its spelling")
        elif kind == "missing":
            lines.append(f"{source}: {where}: required; add it")
        elif kind == "literal_error":
            lines.append(
                f"{source}: {where}: {error.get('input')!r} is not a feature; use one of: "
                f"{', '.join(FEATURES)}"
            )
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {message} (got {error.get('input')!r}); fix it")
    return "\n".join(lines)
