"""`GET /metrics` of a real `bastion proxy` process: the exposition parses, counters move by the
right amounts after known requests, and no key, user, path, model or prompt text shows up."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from audit_proxy.keys import KeyStore

from .conftest import Proxy, start_proxy, stop_proxy
from .fake_upstream import FakeUpstream

ROLES_TOML = """
[roles.user]
[roles.admin]
admin = true
[roles.intern]
features = ["completion"]
[roles.limited]
requests_per_minute = 1
request_burst = 1
"""

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = frozenset[tuple[str, str]]


@dataclass
class Family:
    type: str
    help: str = ""
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


def parse_exposition(text: str) -> dict[str, Family]:
    """A strict reader of the Prometheus text format (0.0.4), enough to check ours."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in helps, f"{where}: second HELP"
            helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), where
            assert name not in families, f"{where}: second TYPE"
            families[name] = Family(kind, helps.get(name, ""))
        else:
            match = _SAMPLE.match(line)
            assert match, f"{where}: not a sample"
            sample, label_text, value = match.groups()
            labels: list[tuple[str, str]] = []
            rest = label_text or ""
            while rest:
                label = _LABEL.match(rest)
                assert label, f"{where}: bad labels at {rest!r}"
                labels.append((label.group(1), label.group(2)))
                rest = rest[label.end() :]
            family_name = sample
            for suffix in _HISTOGRAM_SUFFIXES:
                base = sample.removesuffix(suffix)
                if base != sample and families.get(base, Family("")).type == "histogram":
                    family_name = base
            assert family_name in families, f"{where}: sample before its TYPE"
            key = (sample, frozenset(labels))
            assert key not in families[family_name].samples, f"{where}: duplicate sample"
            families[family_name].samples[key] = float(value)
    for name, family in families.items():
        assert family.help, f"{name} has no HELP"
        if family.type == "histogram":
            _check_histogram(name, family)
    return families


def _check_histogram(name: str, family: Family) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in family.samples.items():
        if sample == name + "_bucket":
            le = dict(labels)["le"]
            rest = frozenset(p for p in labels if p[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
    for labels, buckets in series.items():
        buckets.sort()
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{name}{dict(labels)}: buckets are not cumulative"
        assert buckets[-1][0] == float("inf")
        assert family.samples[(name + "_count", labels)] == counts[-1]
        assert (name + "_sum", labels) in family.samples


class Scrape:
    def __init__(self, families: dict[str, Family]) -> None:
        self.families = families

    def value(self, name: str, **labels: str) -> float:
        for family_name, family in self.families.items():
            if name == family_name or name.startswith(family_name + "_"):
                return family.samples.get((name, frozenset(labels.items())), 0.0)
        return 0.0


@dataclass
class Setup:
    proxy: Proxy
    user: str
    intern: str
    limited: str
    admin: str

    def scrape(self) -> Scrape:
        response = httpx.get(self.proxy.url + "/metrics", headers=bearer(self.admin))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return Scrape(parse_exposition(response.text))


def bearer(key: str, feature: str = "completion") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Bastion-Feature": feature}


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("metrics")
    data_dir = root / "home" / "bastion"
    keys = KeyStore(data_dir / "keys.sqlite3")
    made = (
        keys.create("carol-canary"),
        keys.create("ivan", role="intern"),
        keys.create("lim", role="limited"),
        keys.create("ops", role="admin"),
    )
    keys.close()
    (data_dir / "roles.toml").write_text(ROLES_TOML)
    proxy = start_proxy(upstream.url, data_dir, root / "proxy.log")
    yield Setup(proxy, *made)
    stop_proxy(proxy)


COMPLETIONS = "/v1/completions"
BODY = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8}


def test_request_counters_latency_and_audit_writes_move_by_the_requests_made(
    setup: Setup,
) -> None:
    before = setup.scrape()
    url = setup.proxy.url + COMPLETIONS
    for _ in range(3):
        assert httpx.post(url, json=BODY, headers=bearer(setup.user)).status_code == 200
    no_key = {"X-Bastion-Feature": "completion"}
    assert httpx.post(url, json=BODY, headers=no_key).status_code == 401
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        setup.proxy.url + "/v1/chat/completions", json=chat, headers=bearer(setup.intern, "chat")
    )
    assert response.status_code == 403
    after = setup.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    requests = "bastion_proxy_requests_total"
    assert moved(requests, route=COMPLETIONS, feature="completion", status="200") == 3
    assert moved(requests, route=COMPLETIONS, feature="completion", status="401") == 1
    assert moved(requests, route="/v1/chat/completions", feature="chat", status="403") == 1
    # The scrape before this one is counted by now; this one is not yet.
    assert moved(requests, route="/metrics", feature="none", status="200") == 1
    latency = "bastion_proxy_request_duration_seconds_count"
    assert moved(latency, route=COMPLETIONS) == 4
    assert moved(latency, route="/v1/chat/completions") == 1
    # Audited: the three answered and the denial (on the record); not the 401.
    audit_writes = "bastion_proxy_audit_write_duration_seconds_count"
    assert moved(audit_writes, record="request") == 4
    assert moved(audit_writes, record="outcome") == 4
    assert moved("bastion_proxy_audit_write_duration_seconds_sum", record="request") > 0
    denials = "bastion_proxy_authorization_denials_total"
    assert moved(denials, role="intern", permission="feature") == 1


def test_upstream_errors_policy_hits_and_rate_limits_are_counted(setup: Setup) -> None:
    before = setup.scrape()
    url = setup.proxy.url + COMPLETIONS
    rejected = {**BODY, "model": "reject-key"}
    assert httpx.post(url, json=rejected, headers=bearer(setup.user)).status_code == 502
    secret = {**BODY, "prompt": 'aws = "AKIAZ3MXQ7PLK2RT5VWE"\n'}
    assert httpx.post(url, json=secret, headers=bearer(setup.user)).status_code == 200
    statuses = [httpx.post(url, json=BODY, headers=bearer(setup.limited)).status_code for _ in "12"]
    assert statuses == [200, 429]
    after = setup.scrape()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("bastion_proxy_upstream_errors_total", code="upstream_auth_failed") == 1
    hits = "bastion_proxy_policy_hits_total"
    assert moved(hits, rule="aws_access_key_id", action="redact") == 1
    assert moved("bastion_proxy_rate_limited_total", role="limited", limit="requests") == 1
    assert (
        moved("bastion_proxy_requests_total", route=COMPLETIONS, feature="completion", status="429")
        == 1
    )
    assert (
        moved("bastion_proxy_requests_total", route=COMPLETIONS, feature="completion", status="502")
        == 1
    )


def test_metrics_hold_no_key_user_path_model_or_prompt_text(setup: Setup) -> None:
    canaries = ["zebra-canary-7731", "model-canary-4410", "canary-path-9918", "canary-feature"]
    url = setup.proxy.url + COMPLETIONS
    body = {"model": "model-canary-4410", "prompt": "zebra-canary-7731", "max_tokens": 8}
    httpx.post(url, json=body, headers=bearer(setup.user, "canary-feature"))
    httpx.post(url, json=body, headers=bearer(setup.intern))
    httpx.post(url, json=body, headers=bearer("bst_canary-bad-key"))
    not_found = httpx.get(setup.proxy.url + "/canary-path-9918", headers=bearer(setup.user))
    assert not_found.status_code == 404
    httpx.get(setup.proxy.url + "/v1/audit/canary-path-9918", headers=bearer(setup.admin))
    text = httpx.get(setup.proxy.url + "/metrics", headers=bearer(setup.admin)).text
    scrape = Scrape(parse_exposition(text))
    for secret in [*canaries, setup.user, setup.admin, setup.user[4:], "carol-canary", "bst_"]:
        assert secret not in text
    # The unknown paths are counted under bounded route labels instead.
    assert scrape.value("bastion_proxy_requests_total", route="other", feature="none", status="404")
    audit_any = {"route": "/v1/audit/*", "feature": "none", "status": "404"}
    assert scrape.value("bastion_proxy_requests_total", **audit_any) >= 1
    # An unknown feature tag is "other", not the client's text.
    assert scrape.value(
        "bastion_proxy_requests_total", route=COMPLETIONS, feature="other", status="200"
    )


def test_metrics_need_an_admin_key(setup: Setup) -> None:
    assert httpx.get(setup.proxy.url + "/metrics").status_code == 401
    response = httpx.get(setup.proxy.url + "/metrics", headers=bearer(setup.user))
    assert response.status_code == 403
    assert "needs a role with admin = true" in response.json()["error"]["message"]
