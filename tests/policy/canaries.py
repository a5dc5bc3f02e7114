"""Programmatic canaries: fresh, checksum-valid secrets and PII embedded in realistic code lines."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
DIGITS = string.digits
ALNUM = UPPER + LOWER + DIGITS
B64 = ALNUM + "+/"


@dataclass(frozen=True)
class Canary:
    kind: str
    secret: str  # what must never reach the upstream or the audit store
    line: str  # the secret in a line of code or prose


def pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def mixed(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    """A random string with lower case, upper case and digits (as real keys have)."""
    while True:
        value = pick(rng, alphabet, n)
        if (
            any(c.islower() for c in value)
            and any(c.isupper() for c in value)
            and any(c.isdigit() for c in value)
        ):
            return value


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + pick(rng, DIGITS, length - len(prefix) - 1)
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def iban_for(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _aws_key_id(r: random.Random) -> Canary:
    s = "AKIA" + pick(r, UPPER + "234567", 16)
    return Canary("aws_access_key_id", s, f'AWS_ACCESS_KEY_ID = "{s}"')


def _aws_secret(r: random.Random) -> Canary:
    s = mixed(r, 40, B64)
    return Canary("aws_secret_access_key", s, f"    aws_secret_access_key={s}")


def _gcp_api_key(r: random.Random) -> Canary:
    s = "AIza" + mixed(r, 35, ALNUM + "_-")
    return Canary("gcp_api_key", s, f'const mapsKey = "{s}";')


def _gcp_service_account(r: random.Random) -> Canary:
    body = mixed(r, 64, B64)
    doc = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": pick(r, "0123456789abcdef", 40),
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n",
    }
    return Canary("gcp_service_account", body, f"SA_JSON = '{json.dumps(doc)}'")


def _azure_conn(r: random.Random) -> Canary:
    s = base64.b64encode(r.randbytes(64)).decode()
    line = (
        f'conn = "DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey={s};'
        'EndpointSuffix=core.windows.net"'
    )
    return Canary("azure_storage_key", s, line)


def _azure_sas(r: random.Random) -> Canary:
    s = base64.b64encode(r.randbytes(32)).decode().replace("+", "%2B").replace("=", "%3D")
    url = f"https://acme.blob.core.windows.net/backups?sv=2022-11-02&ss=b&sp=rl&sig={s}"
    return Canary("azure_sas", s, f'SAS_URL = "{url}"')


def _github(r: random.Random) -> Canary:
    s = r.choice(["ghp_", "gho_", "ghs_"]) + mixed(r, 36)
    return Canary("github_token", s, f"export GITHUB_TOKEN={s}")


def _github_pat(r: random.Random) -> Canary:
    s = f"github_pat_{mixed(r, 22)}_{mixed(r, 59)}"
    return Canary("github_pat", s, f'gh = Github("{s}")')


def _gitlab(r: random.Random) -> Canary:
    s = "glpat-" + mixed(r, 20, ALNUM + "_-")
    return Canary("gitlab_token", s, f"gl = gitlab.Gitlab(url, private_token='{s}')")


def _slack_token(r: random.Random) -> Canary:
    s = f"xoxb-{pick(r, DIGITS, 12)}-{pick(r, DIGITS, 13)}-{mixed(r, 24)}"
    return Canary("slack_token", s, f'client = WebClient(token="{s}")')


def _slack_webhook(r: random.Random) -> Canary:
    s = (
        f"https://hooks.slack.com/services/T{pick(r, UPPER + DIGITS, 8)}/"
        f"B{pick(r, UPPER + DIGITS, 10)}/{mixed(r, 24)}"
    )
    return Canary("slack_webhook", s, f"requests.post('{s}', json=payload)")


def _stripe(r: random.Random) -> Canary:
    s = r.choice(["sk_live_", "rk_live_"]) + mixed(r, 24)
    return Canary("stripe_key", s, f"stripe.api_key = '{s}'")


def _pem(r: random.Random) -> Canary:
    lines = [mixed(r, 64, B64) for _ in range(4)]
    kind = r.choice(["RSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "PRIVATE KEY"])
    pem = f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"
    return Canary("private_key_block", lines[1], f'KEY = """{pem}"""')


def _jwt(r: random.Random) -> Canary:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": pick(r, DIGITS, 8), "name": "svc"}).encode())
    s = f"{header}.{payload}.{b64url(r.randbytes(32))}"
    return Canary("jwt", s, f'headers = {{"Authorization": "Bearer {s}"}}')


def _auth_header(r: random.Random) -> Canary:
    s = mixed(r, 40, ALNUM + "-_")
    return Canary("auth_header_credential", s, f"curl -H 'Authorization: Bearer {s}' $API/v1/me")


def _url_password(r: random.Random) -> Canary:
    s = mixed(r, 16)
    scheme = r.choice(["postgres", "mysql", "mongodb+srv", "redis", "amqp"])
    return Canary("url_password", s, f'DATABASE_URL = "{scheme}://app:{s}@db.internal:5432/app"')


def _conn_password(r: random.Random) -> Canary:
    s = mixed(r, 14) + "!"
    line = f'cs = "Server=tcp:sql.acme.net,1433;Database=app;User Id=svc;Password={s};"'
    return Canary("connection_string_password", s, line)


def _assignment(r: random.Random) -> Canary:
    s = mixed(r, 32)
    name = r.choice(["api_key", "client_secret", "DB_PASSWORD", "auth_token", "apiKey"])
    sep = r.choice([" = ", ": ", "="])
    return Canary("secret_assignment", s, f'{name}{sep}"{s}"')


def _ssn(r: random.Random) -> Canary:
    area = r.choice([n for n in range(1, 900) if n != 666])
    s = f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    return Canary("us_ssn", s, f'employee = {{"name": "J. Doe", "ssn": "{s}"}}')


def _card(r: random.Random) -> Canary:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    digits = luhn_complete(prefix, length, r)
    s = " ".join(digits[i : i + 4] for i in range(0, length, 4)) if r.random() < 0.5 else digits
    return Canary("payment_card", s, f"charge(card_number='{s}', amount=1999)")


def _email(r: random.Random) -> Canary:
    s = f"{pick(r, LOWER, 6)}.{pick(r, LOWER, 7)}@{r.choice(['acme', 'globex', 'initech'])}.com"
    return Canary("email_address", s, f"# Maintainer: {s}")


def _phone(r: random.Random) -> Canary:
    a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
    s = r.choice([f"({a}) {b}-{c:04d}", f"+1 {a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}"])
    return Canary("phone_number", s, f'ON_CALL_PHONE = "{s}"')


def _iban(r: random.Random) -> Canary:
    country, bban = r.choice(
        [
            ("DE", pick(r, DIGITS, 18)),
            ("GB", pick(r, UPPER, 4) + pick(r, DIGITS, 14)),
            ("FR", pick(r, DIGITS, 23)),
            ("NL", pick(r, UPPER, 4) + pick(r, DIGITS, 10)),
        ]
    )
    s = iban_for(country, bban)
    return Canary("iban", s, f'payout = {{"iban": "{s}", "currency": "EUR"}}')


def _mrn(r: random.Random) -> Canary:
    s = pick(r, DIGITS, 8)
    return Canary("medical_record_number", s, f"// Patient MRN: {s} admitted for follow-up")


def _dob(r: random.Random) -> Canary:
    y, m, d = r.randint(1930, 2005), r.randint(1, 12), r.randint(1, 28)
    s = r.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}"])
    return Canary("date_of_birth", s, f'patient.update(name="A. Smith", dob="{s}")')


GENERATORS: tuple[Callable[[random.Random], Canary], ...] = (
    _aws_key_id,
    _aws_secret,
    _gcp_api_key,
    _gcp_service_account,
    _azure_conn,
    _azure_sas,
    _github,
    _github_pat,
    _gitlab,
    _slack_token,
    _slack_webhook,
    _stripe,
    _pem,
    _jwt,
    _auth_header,
    _url_password,
    _conn_password,
    _assignment,
    _ssn,
    _card,
    _email,
    _phone,
    _iban,
    _mrn,
    _dob,
)


def canaries(per_kind: int = 10, seed: int = 20261127) -> list[Canary]:
    """`per_kind` fresh canaries of every kind, in a fixed shuffled order."""
    rng = random.Random(seed)
    out = [gen(rng) for gen in GENERATORS for _ in range(per_kind)]
    rng.shuffle(out)
    return out
