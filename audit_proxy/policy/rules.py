"""The policy: a versioned, ordered list of named rules, read from TOML and checked by pydantic.

A policy file looks like this::

    name = "acme"
    version = "2026-11-27.1"

    [[rules]]
    id = "test_fixture_keys"
    pattern = "AKIAFIXTURE[A-Z0-9]{8}"   # a rule may bring its own regular expression
    action = "allow"

    [[rules]]
    id = "private_key_block"
    action = "block"

    [[rules]]
    id = "aws_access_key_id"
    action = "redact"

A rule's `detector` defaults to its `id`. Earlier rules win where spans overlap, so an `allow`
rule placed first exempts what it matches from every later rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit_proxy.config import ConfigError, read_toml
from audit_proxy.policy import injection, pii, secrets
from audit_proxy.policy.gates import ALWAYS, Gate, one_of

Span = tuple[int, int]
Find = Callable[[str], Iterable[Span]]
Action = Literal["redact", "block", "allow", "strip", "annotate"]


@dataclass(frozen=True)
class Detector:
    """A named pure function from text to spans, and the substrings it needs to fire."""

    name: str
    find: Find
    gate: Gate = ALWAYS


DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector(
            "aws_access_key_id", secrets.aws_access_key_id, one_of("akia", "asia", "abia", "acca")
        ),
        Detector("aws_secret_access_key", secrets.aws_secret_access_key, one_of("aws")),
        Detector("gcp_api_key", secrets.gcp_api_key, one_of("aiza")),
        Detector(
            "gcp_service_account_key_id",
            secrets.gcp_service_account_key_id,
            one_of("private_key_id"),
        ),
        Detector(
            "azure_storage_key",
            secrets.azure_storage_key,
            one_of("accountkey", "sharedaccess", "sig="),
        ),
        Detector(
            "github_token",
            secrets.github_token,
            one_of("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        ),
        Detector(
            "gitlab_token", secrets.gitlab_token, one_of("glpat-", "gldt-", "glrt-", "glptt-")
        ),
        Detector("slack_token", secrets.slack_token, one_of("xox")),
        Detector("slack_webhook", secrets.slack_webhook, one_of("hooks.slack.com")),
        Detector("stripe_key", secrets.stripe_key, one_of("_live_")),
        Detector("private_key_block", secrets.private_key_block, one_of("private key")),
        Detector("jwt", secrets.jwt, one_of("eyj")),
        Detector(
            "auth_header_credential",
            secrets.auth_header_credential,
            one_of("bearer", "token", "basic"),
        ),
        Detector("url_password", secrets.url_password, one_of("://")),
        Detector(
            "connection_string_password",
            secrets.connection_string_password,
            one_of("password", "pwd"),
        ),
        Detector(
            "secret_assignment", secrets.secret_assignment, one_of("pass", "secret", "key", "token")
        ),
        Detector("us_ssn", pii.us_ssn, one_of("-", "ssn", "social security")),
        Detector("payment_card", pii.payment_card),
        Detector("email_address", pii.email_address, one_of("@")),
        Detector("phone_number", pii.phone_number),
        Detector("iban", pii.iban),
        Detector(
            "medical_record_number",
            pii.medical_record_number,
            one_of("mrn", "medical record", "patient"),
        ),
        Detector("date_of_birth", pii.date_of_birth, one_of("dob", "d.o.b", "birth", "born")),
        Detector("override_phrase", injection.override_phrase, injection.OVERRIDE_GATE),
        Detector(
            "role_directive",
            injection.role_directive,
            one_of("<|", "<<sys>>", "inst]", "system", "assistant"),
        ),
        Detector("invisible_unicode", injection.invisible_unicode),
        Detector("unicode_tags", injection.unicode_tags),
    )
}


class Rule(BaseModel):
    """One named step: what to look for and what to do with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    action: Action
    detector: str | None = None
    pattern: str | None = None
    description: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        if self.pattern is not None and self.detector is not None:
            raise ValueError("give either detector or pattern, not both")
        if self.pattern is None and self.detector_name not in DETECTORS:
            raise ValueError(
                f"no detector named {self.detector_name!r}; set detector to one of: "
                f"{', '.join(DETECTORS)}, or give a pattern"
            )
        return self

    @property
    def detector_name(self) -> str:
        return self.detector or self.id


class Policy(BaseModel):
    """A versioned, ordered list of rules; the version goes on every audit record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    version: str = Field(min_length=1, max_length=64)
    rules: tuple[Rule, ...]

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} appears twice; rule ids must be unique")
            seen.add(rule.id)
        return rules

    def steps(self) -> list[Step]:
        """The rules as runnable steps, in order."""
        return [Step.of(rule) for rule in self.rules]


@dataclass(frozen=True)
class Step:
    """A rule bound to its detector, ready to run."""

    rule: Rule
    detector: Detector

    @classmethod
    def of(cls, rule: Rule) -> Step:
        if rule.pattern is not None:
            regex = re.compile(rule.pattern)

            def find(text: str) -> Iterator[Span]:
                for m in regex.finditer(text):
                    if m.end() > m.start():
                        yield m.span()

            return cls(rule, Detector(rule.id, find))
        return cls(rule, DETECTORS[rule.detector_name])


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names the file and the key."""


_SECRET_RULES = (
    "aws_access_key_id",
    "aws_secret_access_key",
    "gcp_api_key",
    "gcp_service_account_key_id",
    "azure_storage_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "slack_webhook",
    "stripe_key",
    "private_key_block",
    "jwt",
    "auth_header_credential",
    "url_password",
    "connection_string_password",
    "secret_assignment",
)
_PII_RULES = (
    "us_ssn",
    "payment_card",
    "iban",
    "medical_record_number",
    "date_of_birth",
    "email_address",
    "phone_number",
)

DEFAULT_POLICY = Policy(
    name="bastion-default",
    version="2026.11.27-1",
    rules=(
        Rule(id="unicode_tags", action="strip"),
        Rule(id="invisible_unicode", action="strip"),
        *(Rule(id=name, action="redact") for name in _SECRET_RULES),
        *(Rule(id=name, action="redact") for name in _PII_RULES),
        Rule(id="role_directive", action="annotate"),
        Rule(id="override_phrase", action="annotate"),
    ),
)


def load_policy(path: Path) -> Policy:
    """Read and validate a policy TOML file; raises `PolicyError` naming the file and key."""
    raw = read_toml(path, "policy", "fix policy_file in the config", PolicyError)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_explain(path, raw, exc)) from None


def _explain(path: Path, raw: object, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        parts = [str(p) for p in error["loc"]]
        key = ".".join(parts) or "(top level)"
        # Name the rule by its id as well as its position: `rules.3 (id "jwt")`.
        if len(parts) >= 2 and parts[0] == "rules" and isinstance(raw, dict):
            rules = raw.get("rules")
            index = int(parts[1]) if parts[1].isdigit() else -1
            if isinstance(rules, list) and 0 <= index < len(rules):
                rule_id = rules[index].get("id") if isinstance(rules[index], dict) else None
                if rule_id:
                    key = f"{key} (rule {rule_id!r})"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key; remove it"
        lines.append(f"{path}: {key}: {message}")
    return "\n".join(lines)
