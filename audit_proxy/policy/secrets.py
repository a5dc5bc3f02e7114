"""Secret detectors: small pure functions from text to the spans that must not go upstream."""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from collections.abc import Iterator

from audit_proxy.policy.gates import NeedleScan

Span = tuple[int, int]

# Literal first, boundaries checked after: a pattern that starts with a literal is searched fast.
_AWS_KEY_ID = re.compile(r"A(?:KIA|SIA|BIA|CCA)[A-Z2-7]{16}(?![A-Z0-9])")
_AWS_SECRET = re.compile(
    r"(?i).{0,20}?(?:secret|sk)[a-z_ .-]{0,20}?['\"]?\s*[:=]>?\s*['\"]?"
    r"(?-i:([A-Za-z0-9/+]{40}))(?![A-Za-z0-9/+=])"
)
_GCP_API_KEY = re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")
_GCP_KEY_ID = re.compile(r"\"private_key_id\"\s*:\s*\"([0-9a-f]{40})\"")
_AZURE_ACCOUNT_KEY = re.compile(
    r"(?i)(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{20,}={0,2})"
)
_AZURE_SAS = re.compile(r"(?i)(?:SharedAccessSignature=|[?&]sig=)([A-Za-z0-9%+/]{30,}={0,2})")
_GITHUB = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
    r"(?![A-Za-z0-9_])"
)
_GITLAB = re.compile(r"(?<![\w-])gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_-]{20}(?![\w-])")
_SLACK_TOKEN = re.compile(r"(?<![\w-])xox[bpars]-[0-9A-Za-z]{8,}(?:-[0-9A-Za-z]+){1,4}(?![\w-])")
_SLACK_WEBHOOK = re.compile(
    r"https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{6,}/[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"
)
_STRIPE = re.compile(r"(?<![\w])(?:sk|rk)_live_[0-9A-Za-z]{20,}(?![\w])")
_PEM_BEGIN = re.compile(
    r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----"
)
# The body of a key block cut off before its END line: base64, whitespace, escaped newlines.
_PEM_BODY = re.compile(r"(?:[A-Za-z0-9+/=:,\-\s]|\\[nr])*")
_JWT = re.compile(
    r"(?<![\w-])eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,}(?![\w-])"
)
_AUTH_HEADER = re.compile(
    r"(Bearer|bearer|BEARER|Token|Basic)\s+([A-Za-z0-9._~+/-]{12,}=*)(?![A-Za-z0-9._~+/=-])"
)
_URL_USERINFO = re.compile(r"[^\s:/@'\"<>]{1,64}:([^\s/@'\"<>]{1,128})@([\w.-]+)")
# Documentation examples (RFC 2606 names), not credentials.
_EXAMPLE_HOSTS = ("example.com", "example.org", "example.net", ".example", ".test", ".invalid")
_DSN_KEY = (
    r"(?:password|pwd)\s*=\s*(?!['\"]?\s*[;'\"])"
    r"('[^']{1,128}'|[^;\s'\"(){}\[\],]{1,128})(?=[;\s'\"]|$)"
)
_DSN_PASSWORD = re.compile(r"(?i)(?:^|[;\s'\"])" + _DSN_KEY)
# The same from the key on: in ASCII text the keys are found first (`re` would try every space
# of a prompt as the character before one: 1 ms over 64 KiB of code).
_DSN_PASSWORD_AT_KEY = re.compile("(?i)" + _DSN_KEY)
# Names that say "this is a secret"; the tail is the rest of the name, the operator and the value.
_SECRET_NAMES = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "privatekey",
    "private_key",
    "private-key",
    "token",
)
_SECRET_NAME_SCAN = NeedleScan(_SECRET_NAMES)  # which names occur: one pass, not one per name
_ASSIGNMENT_TAIL = re.compile(
    r"[\w-]{0,20}['\"]?\s*(?::\s*str\s*=|:=|=>|==|[:=])\s*[rbfu]?(['\"])([^'\"\n\\]{8,200})\1",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|-+|<.*>|\{.*\}|\$.*|%.*|.*(?:changeme|change_me|change-me|example"
    r"|placeholder|dummy|sample|redacted|your[_-]|insert[_-]|replace[_-]?me|fixme|todo|xxx"
    r"|\.\.\.|secret_here|password_here|not[_-]?a[_-]?secret|fake|mock).*)$"
)
_UUID = re.compile(r"(?i)^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HASH_VALUE = re.compile(r"(?i)^(?:sha(?:1|224|256|384|512)|md5|blake2b?)[:-][0-9a-z+/=]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$|^[a-z-]+$")


def aws_access_key_id(text: str) -> Iterator[Span]:
    """AWS access key ids (AKIA…/ASIA…, 20 characters)."""
    for m in _AWS_KEY_ID.finditer(text):
        if m.start() == 0 or not text[m.start() - 1].isalnum():
            yield m.span()


def aws_secret_access_key(text: str) -> Iterator[Span]:
    """A 40-character AWS secret access key assigned to a name that says so."""
    lowered = text.lower()
    at = lowered.find("aws") if len(lowered) == len(text) else -1
    while at != -1:
        m = _AWS_SECRET.match(text, at + 3)
        if m:
            yield m.span(1)
        at = lowered.find("aws", at + 3)
    if len(lowered) != len(text):
        for m in re.finditer("(?i)aws", text):
            full = _AWS_SECRET.match(text, m.end())
            if full:
                yield full.span(1)


def gcp_api_key(text: str) -> Iterator[Span]:
    """Google API keys (AIza + 35 characters)."""
    for m in _GCP_API_KEY.finditer(text):
        yield m.span()


def gcp_service_account_key_id(text: str) -> Iterator[Span]:
    """The `private_key_id` of a GCP service-account JSON file."""
    for m in _GCP_KEY_ID.finditer(text):
        yield m.span(1)


def azure_storage_key(text: str) -> Iterator[Span]:
    """Azure storage account keys and shared access keys/signatures in connection strings."""
    for m in _AZURE_ACCOUNT_KEY.finditer(text):
        yield m.span(1)
    for m in _AZURE_SAS.finditer(text):
        yield m.span(1)


def github_token(text: str) -> Iterator[Span]:
    """GitHub tokens: ghp_/gho_/ghu_/ghs_/ghr_ and fine-grained github_pat_."""
    for m in _GITHUB.finditer(text):
        yield m.span()


def gitlab_token(text: str) -> Iterator[Span]:
    """GitLab personal, deploy, runner and trigger tokens."""
    for m in _GITLAB.finditer(text):
        yield m.span()


def slack_token(text: str) -> Iterator[Span]:
    """Slack bot, user, app and refresh tokens (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-)."""
    for m in _SLACK_TOKEN.finditer(text):
        yield m.span()


def slack_webhook(text: str) -> Iterator[Span]:
    """Slack incoming-webhook URLs."""
    for m in _SLACK_WEBHOOK.finditer(text):
        yield m.span()


def stripe_key(text: str) -> Iterator[Span]:
    """Stripe live secret and restricted keys."""
    for m in _STRIPE.finditer(text):
        yield m.span()


def private_key_block(text: str) -> Iterator[Span]:
    """PEM private-key blocks, with real or JSON-escaped newlines, cut off or whole."""
    next_end: dict[str, int] = {}  # label -> where its next END line starts (-1: none left)
    pos = 0
    while (m := _PEM_BEGIN.search(text, pos)) is not None:
        end_line = f"-----END {m.group(1)}-----"
        at = next_end.get(m.group(1), m.end())
        if 0 <= at < m.end():
            at = m.end()
        if at >= 0:
            at = text.find(end_line, at)
            next_end[m.group(1)] = at
        if at >= 0:
            end = at + len(end_line)
        else:
            # No END line: a key pasted in part is still a key; take the body that follows.
            body = _PEM_BODY.match(text, m.end())
            end = body.end() if body else m.end()
            while end > m.end() and text[end - 1] == "-":
                end -= 1  # leave the dashes of a following BEGIN line alone
        yield m.start(), end
        pos = end


def jwt(text: str) -> Iterator[Span]:
    """JSON Web Tokens (three base64url segments, header and payload JSON objects)."""
    for m in _JWT.finditer(text):
        yield m.span()


def auth_header_credential(text: str) -> Iterator[Span]:
    """The credential after Bearer, Token or Basic (Basic only if it decodes to `user:password`)."""
    for m in _at_word_starts(_AUTH_HEADER, text):
        scheme, value = m.group(1).lower(), m.group(2)  # "token" in prose is left alone
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            if ":" in decoded and decoded.isprintable():
                yield m.span(2)
        elif len(value) >= 16 and any(c.isdigit() for c in value) and _looks_random(value):
            yield m.span(2)


def _at_word_starts(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """`pattern`'s matches that start a word, as `\\b` first would give them (searched for
    faster: a pattern that starts with a literal skips ahead to it)."""
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        start = m.start()
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            yield m
            pos = m.end()
        else:
            pos = start + 1  # a match at a word start may begin inside this one


def url_password(text: str) -> Iterator[Span]:
    """The password in `scheme://user:password@host` URLs (database URLs included)."""
    at = text.find("://")
    while at != -1:
        m = _URL_USERINFO.match(text, at + 3) if at > 0 and text[at - 1].isalnum() else None
        at = text.find("://", at + 3)
        if m is None:
            continue
        value, host = m.group(1), m.group(2).lower()
        if host.endswith(_EXAMPLE_HOSTS) or _is_placeholder(value) or value.isdigit():
            continue
        yield m.span(1)


def connection_string_password(text: str) -> Iterator[Span]:
    """`Password=…;` / `password=…` in ADO.NET, ODBC and libpq connection strings."""
    for m in _dsn_passwords(text):
        value = m.group(1).strip("'")
        if not _is_placeholder(value) and not _is_name(value):
            yield m.span(1)


def _dsn_passwords(text: str) -> Iterator[re.Match[str]]:
    """`_DSN_PASSWORD.finditer(text)`; in ASCII text from where the keys are."""
    if not text.isascii():
        yield from _DSN_PASSWORD.finditer(text)
        return
    lowered = text.lower()
    keys = sorted(at for key in ("password", "pwd") for at in _occurrences(lowered, key))
    end = 0  # where the last match ended: the next one's leading character comes after it
    for at in keys:
        before = at - 1
        if at > 0 and (before < end or not (text[before] in ";'\"" or text[before].isspace())):
            continue
        m = _DSN_PASSWORD_AT_KEY.match(text, at)
        if m is not None:
            yield m
            end = m.end()


def _occurrences(text: str, needle: str) -> list[int]:
    found = []
    at = text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def secret_assignment(text: str) -> Iterator[Span]:
    """A quoted, random-looking value assigned to a name like password, api_key or token."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few non-ASCII characters change length when lowered
        lowered = "".join(c.lower() if c.isascii() else "_" for c in text)
    seen: set[int] = set()
    held = _SECRET_NAME_SCAN.held(lowered)
    for name in _SECRET_NAMES:
        if name not in held:
            continue
        for at in _occurrences(lowered, name):
            m = _ASSIGNMENT_TAIL.match(text, at + len(name))
            if m and m.start(2) not in seen and _looks_random(m.group(2)):
                seen.add(m.start(2))
                yield m.span(2)


# Values that name the thing instead of being it (`user:pass@`, `password=password`).
_TRIVIAL = frozenset({"pass", "passwd", "password", "pwd", "secret", "token", "key", "test"})


def _is_placeholder(value: str) -> bool:
    return value.lower() in _TRIVIAL or value.startswith("=") or bool(_PLACEHOLDER.match(value))


def _is_name(value: str) -> bool:
    """An identifier, header or attribute path without digits (`auth_token`, `cfg.DB_PASSWORD`)."""
    return bool(_IDENTIFIER.match(value)) and not any(c.isdigit() for c in value)


def _looks_random(value: str) -> bool:
    if " " in value or _is_placeholder(value) or _UUID.match(value) or _HASH_VALUE.match(value):
        return False
    if _is_name(value):
        return False
    classes = sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
            any(not c.isalnum() for c in value),
        )
    )
    return classes >= 2 and shannon_entropy(value) >= 3.0


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())
