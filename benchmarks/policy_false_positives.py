"""How often the default policy fires on ordinary code: 30-line snippets of installed libraries.

The test suite asserts the rate on a fixed 400-snippet selection; this script also runs every
snippet of the same packages and names what fired where, so a rule change can be judged.

    .venv/bin/python benchmarks/policy_false_positives.py

Prints what fired, a one-line summary, then last `{"snippets": .., "fired": .., "rate": ..}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit_proxy.policy import DEFAULT_POLICY, Engine
from tests.policy.snippets import PACKAGES, snippets


def main() -> None:
    engine = Engine(DEFAULT_POLICY)
    results = {}
    for label, chosen in (("selection", snippets(400)), ("all", snippets(10**9))):
        fired = 0
        for name, code in chosen:
            _, findings = engine.apply_text(code, "prompt")
            if findings:
                fired += 1
                if label == "all":
                    print(f"{name}: {', '.join(sorted({f.rule for f in findings}))}")
        results[label] = (len(chosen), fired)
    n, fired = results["selection"]
    n_all, fired_all = results["all"]
    print(
        f"policy {DEFAULT_POLICY.version} on {', '.join(PACKAGES)}: {fired}/{n} selected snippets "
        f"fire ({fired / n:.2%}); {fired_all}/{n_all} of all snippets ({fired_all / n_all:.2%}); "
        "goal <= 2%"
    )
    print(json.dumps({"snippets": n, "fired": fired, "rate": round(fired / n, 4)}))


if __name__ == "__main__":
    main()
