"""The policy layer: named rules that redact, block, strip or flag what goes to the model."""

from audit_proxy.policy.engine import Engine, Finding, Outcome
from audit_proxy.policy.layer import POLICY_BLOCKED_BY, POLICY_EVIDENCE, ApplyPolicy, EnforceBlock
from audit_proxy.policy.rules import (
    DEFAULT_POLICY,
    DETECTORS,
    Detector,
    Policy,
    PolicyError,
    Rule,
    load_policy,
)

__all__ = [
    "DEFAULT_POLICY",
    "DETECTORS",
    "POLICY_BLOCKED_BY",
    "POLICY_EVIDENCE",
    "ApplyPolicy",
    "Detector",
    "EnforceBlock",
    "Engine",
    "Finding",
    "Outcome",
    "Policy",
    "PolicyError",
    "Rule",
    "load_policy",
]
