"""False positives: how often the default policy fires on ordinary code from real projects."""

from __future__ import annotations

from audit_proxy.policy import DEFAULT_POLICY, Engine

from .snippets import snippets

GOAL = 0.02


def test_false_positive_rate_on_real_code_is_within_goal() -> None:
    engine = Engine(DEFAULT_POLICY)
    chosen = snippets(400)
    assert len(chosen) >= 200
    fired = {}
    for name, code in chosen:
        _, findings = engine.apply_text(code, "prompt")
        if findings:
            fired[name] = sorted({f.rule for f in findings})
    rate = len(fired) / len(chosen)
    print(f"\nfalse positives: {len(fired)}/{len(chosen)} snippets = {rate:.2%}: {fired}")
    assert rate <= GOAL, fired
