"""PII and PHI detectors, with checksums and context so that ordinary code does not trip them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

import re2

from audit_proxy.policy.gates import PatternScan

Span = tuple[int, int]

# Every number these detectors look for holds a run like this; one scan finds the runs, and the
# detectors' own patterns then run only in windows around them (a scan per pattern costs ~40 µs).
_NUMERIC_RUN = re.compile(r"\d[\d ().+-]{7,}\d")
# The same runs found by RE2 over the bytes of ASCII text (where \d is [0-9]), in a third of the
# time; in other text RE2 first says whether there is a run at all: \p{Nd} is what Python's \d
# matches in a str (RE2's Unicode tables are as new or newer).
_NUMERIC_RUN_IN_ASCII = re2.compile(rb"[0-9][0-9 ().+-]{7,}[0-9]")
_ANY_NUMERIC_RUN = PatternScan([r"\p{Nd}[\p{Nd} ().+-]{7,}\p{Nd}"])
_MARGIN = 48
_SSN = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")
_SSN_IN_CONTEXT = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\b\W{0,5}(\d{3})[ -]?(\d{2})[ -]?(\d{4})\b"
)
_CARD = re.compile(r"(?<![\w.-])(?:\d[ -]?){12,18}\d(?![\w.-])")
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN = re.compile(r"((?:[A-Za-z0-9-]{1,63}\.)+([A-Za-z]{2,24}))(?![\w-])")
# Two-letter TLDs are all country codes; longer ones must be common, so `x@self.weight` is not mail.
_COMMON_TLDS = frozenset(
    [
        "com",
        "org",
        "net",
        "edu",
        "gov",
        "mil",
        "int",
        "info",
        "biz",
        "dev",
        "app",
        "cloud",
        "tech",
        "online",
        "email",
        "mail",
        "health",
        "care",
        "hospital",
        "bank",
        "finance",
    ]
)
_RESERVED_DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "localhost",
    # Placeholders in documentation.
    "domain.com",
    "yourdomain.com",
    "company.com",
    "yourcompany.com",
)
_RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost", "local", "internal"})
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"(?:\+?1[ .-]?)?\(?[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}"
    r"|\(\d{2,4}\)\s?\d{3,4}[ .-]\d{3,4}"
    r"|\+[1-9]\d{0,2}(?:[ .-]\(?\d{1,4}\)?){2,5}"
    r")(?![\w.-])"
)
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "TR": 26,
}  # fmt: skip
_MRN = re.compile(
    r"(?i)\b(?:MRN|medical record (?:number|no\.?|#)|patient (?:id|number))\b\W{0,5}"
    r"(?-i:([A-Z]{0,3}-?\d{5,12}))\b"
)
_DATE = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"
    r"|\d{1,2}\s+[A-Za-z]{3,9}\.?,?\s+\d{4}|[A-Za-z]{3,9}\.?\s+\d{1,2},?\s+\d{4})"
)
_DOB = re.compile(
    r"(?i)\b(?:DOB|D\.O\.B\.?|date[ _]of[ _]birth|birth[ _]?date|born(?: on)?)\b\W{0,5}("
    + _DATE
    + ")"
)


@lru_cache(maxsize=4)
def numeric_windows(text: str) -> tuple[Span, ...]:
    """Merged windows around the runs of digits (with separators) in `text`."""
    if text.isascii():
        runs = _NUMERIC_RUN_IN_ASCII.finditer(text.encode("ascii"))
    elif _ANY_NUMERIC_RUN.held(text):
        runs = _NUMERIC_RUN.finditer(text)
    else:
        return ()
    windows: list[list[int]] = []
    n = len(text)
    for m in runs:
        lo, hi = max(0, m.start() - _MARGIN), min(n, m.end() + _MARGIN)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    return tuple((lo, hi) for lo, hi in windows)


def _near_numbers(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    n = len(text)
    for lo, hi in numeric_windows(text):
        for m in pattern.finditer(text, lo, hi):
            # A match touching a window's cut end might be longer in the full text; redo it there.
            if m.end() == hi < n:
                full = pattern.match(text, m.start())
                if full:
                    yield full
                continue
            yield m


def us_ssn(text: str) -> Iterator[Span]:
    """US social security numbers in valid ranges (dashed, or undashed after 'SSN')."""
    for m in _near_numbers(_SSN, text):
        if _valid_ssn(m.group(1), m.group(2), m.group(3)):
            yield m.span()
    for m in _near_numbers(_SSN_IN_CONTEXT, text):
        if _valid_ssn(m.group(1), m.group(2), m.group(3)):
            yield m.start(1), m.end(3)


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def payment_card(text: str) -> Iterator[Span]:
    """Card numbers of a known issuer prefix that pass the Luhn check."""
    for m in _near_numbers(_CARD, text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and _card_prefix(digits) and luhn_valid(digits):
            yield m.span()


def _card_prefix(digits: str) -> bool:
    two, four = int(digits[:2]), int(digits[:4])
    return (
        digits[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 35, 62, 65)
        or four == 6011
        or 300 <= int(digits[:3]) <= 305
    )


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def email_address(text: str) -> Iterator[Span]:
    """E-mail addresses, except reserved example/test domains and `a@obj.attr` expressions."""
    at = text.find("@")
    while at != -1:
        span = _email_at(text, at)
        if span is not None:
            yield span
        at = text.find("@", at + 1)


def _email_at(text: str, at: int) -> Span | None:
    start = at
    while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
        start -= 1
    while start < at and not text[start].isalnum():
        start += 1
    m = _DOMAIN.match(text, at + 1)
    if start == at or m is None:
        return None
    domain, tld = m.group(1).lower(), m.group(2).lower()
    if tld in _RESERVED_TLDS or domain.endswith(_RESERVED_DOMAINS):
        return None
    if len(tld) == 2 or tld in _COMMON_TLDS:
        return start, m.end()
    return None


def phone_number(text: str) -> Iterator[Span]:
    """Phone numbers written with separators: NANP, (area) local, and +country forms."""
    for m in _near_numbers(_PHONE, text):
        digits = sum(c.isdigit() for c in m.group())
        if 10 <= digits <= 15:
            yield m.span()


def iban(text: str) -> Iterator[Span]:
    """IBANs of a known country and length that pass the mod-97 check."""
    for m in _near_numbers(_IBAN, text):
        value = m.group(1).replace(" ", "")
        if _IBAN_LENGTHS.get(value[:2]) == len(value) and iban_valid(value):
            yield m.span(1)


def iban_valid(value: str) -> bool:
    """The ISO 13616 mod-97 check of an IBAN without spaces."""
    rearranged = value[4:] + value[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def medical_record_number(text: str) -> Iterator[Span]:
    """A medical record number after `MRN`, `medical record number` or `patient id`."""
    for m in _MRN.finditer(text):
        yield m.span(1)


def date_of_birth(text: str) -> Iterator[Span]:
    """A date after `DOB`, `date of birth`, `birthdate` or `born on`."""
    for m in _DOB.finditer(text):
        yield m.span(1)
