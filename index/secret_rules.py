"""What counts as secret material: file names never read, and content rules that skip a file."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

# Matched against the file's name (lower-cased), never its content: these files are not even read.
SECRET_NAME_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.ppk",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "kubeconfig",
    "kubeconfig.*",
    "*.kubeconfig",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".htpasswd",
    "secrets.yaml",
    "secrets.yml",
    "*.tfstate",
    "*.tfstate.backup",
)


@dataclass(frozen=True)
class SecretRule:
    """One content rule: its name (reported) and what it matches."""

    name: str
    pattern: re.Pattern[str]
    # Literal strings one of which any match contains: a cheap test before the regex runs.
    markers: tuple[str, ...]


SECRET_CONTENT_RULES: tuple[SecretRule, ...] = (
    SecretRule(
        "private-key",
        re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
        ("PRIVATE KEY",),
    ),
    SecretRule(
        "aws-access-key-id",
        re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
        ("AKIA", "ASIA", "AGPA", "AIDA", "AROA"),
    ),
    SecretRule(
        "aws-secret-access-key",
        re.compile(r"(?i)aws_?secret_?access_?key\W{0,5}[:=]\s*['\"]?[A-Za-z0-9/+=]{40}\b"),
        ("aws", "AWS", "Aws"),
    ),
    SecretRule(
        "github-token",
        re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b"),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    SecretRule(
        "github-fine-grained-token",
        re.compile(r"\bgithub_pat_[A-Za-z0-9_]{60,}\b"),
        ("github_pat_",),
    ),
    SecretRule("gitlab-token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20}\b"), ("glpat-",)),
    SecretRule("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"), ("xox",)),
    SecretRule("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), ("AIza",)),
    SecretRule("stripe-live-key", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{20,}\b"), ("k_live_",)),
    SecretRule(
        "openai-key",
        re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20}T3BlbkFJ[A-Za-z0-9_\-]{20,}"),
        ("T3BlbkFJ",),
    ),
    SecretRule("anthropic-key", re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{32,}"), ("sk-ant-",)),
    SecretRule(
        "kubeconfig-client-key",
        re.compile(r"(?m)^\s*client-key-data:\s*[A-Za-z0-9+/=]{20,}"),
        ("client-key-data",),
    ),
)


def secret_name(name: str) -> str | None:
    """The name pattern a file name matches, or None."""
    lowered = name.lower()
    for pattern in SECRET_NAME_PATTERNS:
        if fnmatch.fnmatchcase(lowered, pattern):
            return pattern
    return None


def secret_content(text: str) -> str | None:
    """The name of the first content rule that fires, or None."""
    for rule in SECRET_CONTENT_RULES:
        if any(marker in text for marker in rule.markers) and rule.pattern.search(text):
            return rule.name
    return None
