"""Running a policy over a request: find, resolve overlaps, rewrite, and keep the evidence."""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from audit_proxy.policy import pii
from audit_proxy.policy.gates import NeedleScan, folded
from audit_proxy.policy.rules import Policy, Step

# Keys whose values route the request rather than carry the user's text.
_ROUTING_KEYS = frozenset({"model"})
# A raw completion prompt (and its stop sequences) is laid out by the client in the model's own
# template, so its role and turn markers are structure, not an injection; every other rule still
# applies there.
_TEMPLATE_FIELD = re.compile(r"^(prompt|stop)(\[\d+\])?$")
_TEMPLATE_DETECTORS = frozenset({"role_directive"})
# A message's role, when it is one of the API's own: nothing in these words can match a rule.
_ROLE_NAMES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The API's own field names; every other key is scanned like a value (a key goes upstream too).
_API_KEYS = frozenset(
    {
        "role",
        "content",
        "prompt",
        "messages",
        "type",
        "text",
        "name",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "stream",
        "stop",
        "n",
        "echo",
        "stream_options",
        "include_usage",
        "tool_calls",
        "function",
        "arguments",
        "id",
        "add_special_tokens",
        "seed",
        "logprobs",
    }
)


@dataclass(frozen=True)
class Finding:
    """One rule firing on one span; `start`/`end` index the original field text.

    `hmac_sha256` is HMAC-SHA256 of the original span under the deployment's evidence key, not
    a plain SHA-256: an SSN, a card number or a password has so few possible values that a
    plain hash on the record (and in every SIEM the record is shipped to) could be reversed by
    trying them all. The same value still gets the same digest across records, and whoever holds
    the key can check a suspected value (`bastion audit evidence-digest`).
    """

    rule: str
    action: str
    field: str
    start: int
    end: int
    hmac_sha256: str

    def evidence(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "action": self.action,
            "field": self.field,
            "start": self.start,
            "end": self.end,
            "hmac_sha256": self.hmac_sha256,
        }


@dataclass
class Outcome:
    """What the policy made of a request body."""

    body: bytes
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocked_by(self) -> list[str]:
        return list(dict.fromkeys(f.rule for f in self.findings if f.action == "block"))

    def evidence(self, policy: Policy) -> str:
        """The JSON kept on the audit record: rules, offsets and hashes, never the text."""
        return json.dumps(
            {
                "policy": policy.name,
                "version": policy.version,
                "decision": "block" if self.blocked_by else "forward",
                "blocked_by": self.blocked_by,
                "findings": [f.evidence() for f in self.findings],
            },
            separators=(",", ":"),
        )


def evidence_digest(key: bytes, span: str) -> str:
    """The digest a finding keeps of the span it found (see `Finding`)."""
    return hmac.digest(key, span.encode("utf-8", "surrogatepass"), "sha256").hex()


class Engine:
    """A compiled policy; `apply` is a pure function of the body.

    `evidence_key` keys the findings' digests: a key, or where it may change while the engine
    runs (a signing-key rotation), what gives the key in force. Without one the engine makes its
    own, so its digests can only be compared with each other.
    """

    def __init__(
        self, policy: Policy, evidence_key: bytes | Callable[[], bytes] | None = None
    ) -> None:
        self.policy = policy
        if evidence_key is None or isinstance(evidence_key, bytes):
            fixed = evidence_key if evidence_key is not None else os.urandom(32)
            self._evidence_key: Callable[[], bytes] = lambda: fixed
        else:
            self._evidence_key = evidence_key
        steps = policy.steps()
        # Stripping goes first, so that a secret split by zero-width characters is whole again
        # before the detectors look for it.
        self._strip = _Steps([s for s in steps if s.rule.action == "strip"])
        rest = [s for s in steps if s.rule.action != "strip"]
        self._rest = _Steps(rest)
        self._rest_in_templates = _Steps(
            [s for s in rest if s.rule.detector_name not in _TEMPLATE_DETECTORS]
        )
        self._needles = NeedleScan(n for s in steps for n in s.detector.gate.needles())
        # Most requests hold nothing: their evidence is the same string every time.
        self._clean_evidence = Outcome(b"").evidence(policy)

    def apply(self, body: bytes) -> Outcome:
        """Apply the policy to every string the body sends upstream; rewrite the body if needed."""
        duplicates = False

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal duplicates
            obj = dict(items)
            duplicates |= len(obj) != len(items)
            return obj

        try:
            doc = json.loads(body, object_pairs_hook=pairs)
        except ValueError:
            doc = None
        if doc is None:
            text, encoding = _decode(body)
            new_text, found = self.apply_text(text, "$body")
            return Outcome(new_text.encode(encoding) if new_text != text else body, found)
        findings: list[Finding] = []
        try:
            new_doc, changed = self._walk(doc, "", findings)
        finally:
            pii.numeric_windows.cache_clear()  # no prompt outlives its request in the cache
        # A repeated key is re-serialized too: its shadowed value was never scanned, and a parser
        # upstream that keeps the first one would read it.
        if not changed and not duplicates:
            return Outcome(body, findings)
        return Outcome(_dump(new_doc), findings)

    def _walk(self, node: Any, path: str, findings: list[Finding]) -> tuple[Any, bool]:
        if isinstance(node, str):
            text, found = self.apply_text(node, path or "$")
            findings.extend(found)
            return text, text != node
        changed = False
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for i, (key, value) in enumerate(node.items()):
                if (key in _ROUTING_KEYS and not path) or (key == "role" and value in _ROLE_NAMES):
                    out[key] = value
                    continue
                if key not in _API_KEYS:
                    # Keys go upstream too; the path names a rewritten key by its position.
                    new_key, found = self.apply_text(key, f"{path}{{key {i}}}")
                    findings.extend(found)
                    changed |= new_key != key
                    key = new_key
                out[key], c = self._walk(value, f"{path}.{key}" if path else key, findings)
                changed |= c
            return out, changed
        if isinstance(node, list):
            items = []
            for i, value in enumerate(node):
                item, c = self._walk(value, f"{path}[{i}]", findings)
                items.append(item)
                changed |= c
            return items, changed
        return node, False

    def apply_text(self, text: str, field_path: str) -> tuple[str, list[Finding]]:
        """The rewritten text and the findings (offsets into `text`) for one field."""
        if not text:
            return text, []
        findings: list[Finding] = []
        original = text
        kept: list[int] | None = None  # stripped position -> original position
        strip_spans = _claim(self._strip, text, self._needles)
        if strip_spans:
            findings.extend(self._finding(s, original, field_path, a, b) for a, b, s in strip_spans)
            text, kept = _remove(text, [(a, b) for a, b, _ in strip_spans])
        rest = self._rest_in_templates if _TEMPLATE_FIELD.match(field_path) else self._rest
        spans = _claim(rest, text, self._needles)
        if not spans:
            return text, findings
        parts: list[str] = []
        last = 0
        for a, b, step in spans:
            oa, ob = (kept[a], kept[b - 1] + 1) if kept is not None else (a, b)
            findings.append(self._finding(step, original, field_path, oa, ob))
            parts.append(text[last:a])
            parts.append(_replacement(step, text[a:b]))
            last = b
        parts.append(text[last:])
        findings.sort(key=lambda f: f.start)
        return "".join(parts), findings

    def evidence(self, outcome: Outcome) -> str:
        """The evidence JSON of `outcome` for the audit record (see `Outcome.evidence`)."""
        return outcome.evidence(self.policy) if outcome.findings else self._clean_evidence

    def _finding(self, step: Step, original: str, field_path: str, start: int, end: int) -> Finding:
        digest = evidence_digest(self._evidence_key(), original[start:end])
        return Finding(step.rule.id, step.rule.action, field_path, start, end, digest)


class _Steps:
    """Steps in policy order, and those whose gates open on a text that holds no needle: most
    fields hold none, and then no gate need be asked."""

    def __init__(self, steps: list[Step]) -> None:
        self.all = steps
        self.on_no_needle = [s for s in steps if s.detector.gate.opens(frozenset())]

    def opening(self, text: str, needles: NeedleScan) -> list[Step]:
        """The steps whose gates open on `text`, in policy order."""
        if len(self.on_no_needle) == len(self.all):
            return self.all  # (a gate open on no needle is open on any: needles only add ways)
        held = needles.held(folded(text))
        if not held:
            return self.on_no_needle
        return [s for s in self.all if s.detector.gate.opens(held)]


def _claim(steps: _Steps, text: str, needles: NeedleScan) -> list[tuple[int, int, Step]]:
    """Each step's spans in policy order; an earlier rule keeps a span a later one overlaps."""
    claimed: list[tuple[int, int, Step]] = []
    for step in steps.opening(text, needles):
        for a, b in _spans(step, text):
            if all(b <= x or a >= y for x, y, _ in claimed):
                claimed.append((a, b, step))
    claimed.sort(key=lambda c: c[0])
    return claimed


def _spans(step: Step, text: str) -> Iterator[tuple[int, int]]:
    for a, b in step.detector.find(text):
        if b > a:
            yield a, b


def _remove(text: str, spans: list[tuple[int, int]]) -> tuple[str, list[int]]:
    parts: list[str] = []
    kept: list[int] = []
    last = 0
    for a, b in spans:
        parts.append(text[last:a])
        kept.extend(range(last, a))
        last = b
    parts.append(text[last:])
    kept.extend(range(last, len(text)))
    return "".join(parts), kept


def _replacement(step: Step, span: str) -> str:
    action, rule = step.rule.action, step.rule.id
    if action == "redact":
        return f"[REDACTED:{rule}]"
    if action == "block":
        return f"[BLOCKED:{rule}]"
    if action == "annotate":
        return f"[FLAGGED:{rule}]{span}"
    return span  # allow


def _dump(doc: Any) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (`"\\ud800"`) only survives as an escape
        return json.dumps(doc).encode()


def _decode(body: bytes) -> tuple[str, str]:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("latin-1"), "latin-1"
