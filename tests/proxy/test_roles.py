"""Roles over real HTTP: a `bastion proxy` with a roles file, real keys, a recording upstream.

Also the roles file's validation (errors name the file and the key path), `bastion roles check`,
and the token bucket's arithmetic on an injected clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from audit_proxy.keys import KeyStore, Principal
from audit_proxy.ratelimit import RateLimiter, Refusal, TokenBucket
from audit_proxy.roles import BUILTIN_ROLES, RolesError, load_roles, parse_roles
from audit_proxy.roles_reload import LiveRoles

from .conftest import REPO, Proxy, start_proxy, stop_proxy
from .fake_upstream import FakeUpstream

ROLES_TOML = """
[roles.user]

[roles.admin]
admin = true

[roles.intern]
models = ["tiny", "qwen2.5-coder-*"]
features = ["completion", "tokenize"]
max_tokens = 512

[roles.limited]
requests_per_minute = 30        # refills one request every 2 s
request_burst = 2

[roles.metered]
tokens_per_minute = 60          # one token a second: nothing refills during the test
token_burst = 100

[users]
root = "admin"

[groups.interns]
members = ["bob", "carol"]
role = "intern"
"""

COMPLETION = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8}
ROLES_CHECK = [sys.executable, "-m", "bastion.proxy_commands", "roles", "check"]


def auth(key: str, feature: str = "completion") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Bastion-Feature": feature}


@dataclass
class Keys:
    bob: str  # issued as "user", mapped to "intern" by the group
    dave: str  # "user"
    lim: str  # "limited"
    meter: str  # "metered"
    stream_meter: str  # "metered"
    admin: str  # "admin"
    root: str  # issued as "user", mapped to "admin" by [users]


@pytest.fixture(scope="module")
def roles_proxy(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proxy, Keys]]:
    root = tmp_path_factory.mktemp("roles")
    data_dir = root / "home" / "bastion"
    store = KeyStore(data_dir / "keys.sqlite3")
    keys = Keys(
        bob=store.create("bob"),
        dave=store.create("dave"),
        lim=store.create("lim", role="limited"),
        meter=store.create("meter", role="metered"),
        stream_meter=store.create("stream-meter", role="metered"),
        admin=store.create("ada", role="admin"),
        root=store.create("root"),
    )
    store.close()
    (data_dir / "roles.toml").write_text(ROLES_TOML)
    running = start_proxy(upstream.url, data_dir, root / "proxy.log")
    yield running, keys
    stop_proxy(running)


def error_of(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


# --- the roles file ------------------------------------------------------------------------------


def test_bad_roles_files_name_the_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "roles.toml"
    path.write_text(
        '[roles.intern]\nfeatures = ["completion", "chat", "chatt"]\nmax_tokens = 0\n'
        "colour = 1\n[roles.x]\nrequest_burst = 3\n"
    )
    with pytest.raises(RolesError) as caught:
        load_roles(path)
    message = str(caught.value)
    assert f"{path}: roles.intern.features[2]: 'chatt' is not a feature; use one of" in message
    assert f"{path}: roles.intern.max_tokens:" in message
    assert f"{path}: roles.intern.colour: unknown key" in message
    assert "roles.x: request_burst needs requests_per_minute" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"roles": {"user": {}}, "users": {"alice": "auditor"}},
            "f.toml: users.alice: role 'auditor' is not defined; add [roles.auditor] or use "
            "one of: user",
        ),
        (
            {"roles": {"user": {}}, "groups": {"ops": {"members": ["a"], "role": "sre"}}},
            "f.toml: groups.ops.role: role 'sre' is not defined",
        ),
        (
            {
                "roles": {"a": {}, "b": {}},
                "groups": {
                    "g1": {"members": ["x"], "role": "a"},
                    "g2": {"members": ["y", "x"], "role": "b"},
                },
            },
            "f.toml: groups.g2.members[1]: 'x' is also in group 'g1' with role 'a'",
        ),
        ({"roles": {"Root!": {}}}, "f.toml: roles: role name 'Root!' is not valid"),
        ({"users": {}}, "f.toml: roles: required; add it"),
        ({"roles": {"a": {"models": "*"}}}, "f.toml: roles.a.models:"),
    ],
    ids=["user-role", "group-role", "two-groups", "role-name", "no-roles", "models-not-list"],
)
def test_roles_file_errors(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(RolesError) as caught:
        parse_roles(raw, "f.toml")
    assert expected in str(caught.value)


def test_users_win_over_groups_and_groups_over_the_keys_role() -> None:
    roles = parse_roles(
        {
            "roles": {"user": {}, "intern": {"features": ["completion"]}, "ops": {}},
            "users": {"carol": "ops"},
            "groups": {"interns": {"members": ["bob", "carol"], "role": "intern"}},
        },
        "f.toml",
    )
    assert roles.role_of(Principal(name="bob", role="user")) == "intern"
    assert roles.role_of(Principal(name="carol", role="user")) == "ops"
    assert roles.role_of(Principal(name="dave", role="user")) == "user"
    assert roles.get("nobody") is None  # a file's roles have no fallback
    assert BUILTIN_ROLES.get("nobody") is not None  # the defaults keep today's behaviour
    assert BUILTIN_ROLES.get("admin") is not None and BUILTIN_ROLES.roles["admin"].admin


def test_roles_check_prints_the_effective_mapping(tmp_path: Path) -> None:
    path = tmp_path / "roles.toml"
    path.write_text(ROLES_TOML)
    data_dir = tmp_path / "data"
    KeyStore(data_dir / "keys.sqlite3").create("bob")
    result = subprocess.run(
        [*ROLES_CHECK, str(path), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "intern: models=tiny,qwen2.5-coder-* features=completion,tokenize max_tokens=512" in (
        result.stdout
    )
    assert "bob -> intern  (from groups.interns)" in result.stdout
    assert "root -> admin  (from users)" in result.stdout
    assert "keys:\n  bob -> intern  (active)" in result.stdout

    path.write_text('[roles.intern]\nfeatures = ["completion", "chat", "chatt"]\n')
    result = subprocess.run(
        [*ROLES_CHECK, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1
    assert "roles.intern.features[2]: 'chatt' is not a feature" in result.stderr


def test_keys_create_refuses_a_role_the_roles_file_lacks(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "roles.toml").write_text(ROLES_TOML)
    command = [sys.executable, "-m", "bastion.proxy_commands", "keys", "create"]
    result = subprocess.run(
        [*command, "eve", "--role", "ghost", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1
    assert "role 'ghost' is not defined in" in result.stderr
    ok = subprocess.run(
        [*command, "eve", "--role", "limited", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("bst_")


def test_an_active_key_with_an_undefined_role_stops_the_start(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "home"
    KeyStore(data_dir / "keys.sqlite3").create("old", role="contractor")
    (data_dir / "roles.toml").write_text(ROLES_TOML)
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log", wait=False)
    try:
        assert proxy.process.wait(20) == 2
    finally:
        if proxy.process.poll() is None:
            stop_proxy(proxy)
    log = proxy.log()
    assert "active keys have roles the file does not define: 'old' (role 'contractor')" in log
    assert "roles.toml" in log


# --- the token bucket ----------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_and_says_when_to_retry() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])

    def take(user: str = "u") -> Refusal | None:
        return limiter.take(user, "r", "requests", per_minute=60.0, burst=2, amount=1)

    assert take() is None and take() is None
    refusal = take()
    assert refusal is not None and refusal.limit == "requests"
    assert refusal.retry_after_s == pytest.approx(1.0)
    assert refusal.retry_after_header == "1"
    now[0] += 0.5
    refusal = take()
    assert refusal is not None and refusal.retry_after_s == pytest.approx(0.5)
    now[0] += 0.5
    assert take() is None
    assert take("v") is None  # another user has a bucket of their own


def test_token_bucket_settles_estimates_and_lets_a_larger_request_through_when_full() -> None:
    bucket = TokenBucket(per_minute=60.0, burst=100, now=0.0)
    assert bucket.take(250, now=0.0) == 0.0  # more than the bucket holds: it needs a full one
    assert bucket.level == -150
    assert bucket.take(10, now=0.0) == pytest.approx(160.0)  # 160 tokens at 1 a second
    bucket.give_back(240, now=0.0)  # it used 10 of the 250 it was charged
    assert bucket.level == 90
    bucket.give_back(-30, now=0.0)  # and a later one used more than its estimate
    assert bucket.level == 60
    assert bucket.take(61, now=0.0) == pytest.approx(1.0)


# --- over HTTP -----------------------------------------------------------------------------------


def test_group_member_gets_the_groups_role_and_a_forbidden_feature_is_403(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    before = len(proxy.store().requests())
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(keys.bob, "chat"),
    )
    assert response.status_code == 403
    assert error_of(response)["message"] == "role 'intern' does not allow feature 'chat'"
    assert error_of(response)["code"] == "forbidden:feature"
    assert upstream.received == []
    # The denial is on the record, under the role that decided it.
    records = proxy.store().requests()
    assert len(records) == before + 1
    assert (records[-1].user, records[-1].role, records[-1].feature) == ("bob", "intern", "chat")
    outcome = proxy.store().outcome(records[-1].id)
    assert outcome is not None and outcome.status == 403
    assert b"does not allow feature" in outcome.response_body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "big-model", "prompt": "x", "max_tokens": 8},
            "does not allow model 'big-model'",
        ),
        ({"prompt": "x", "max_tokens": 8}, "allows only the models tiny, qwen2.5-coder-*"),
        (
            {"model": "tiny", "prompt": "x", "max_tokens": 4096},
            "max_tokens 4096 exceeds the role's limit 512",
        ),
        (
            {"model": "qwen2.5-coder-7b", "prompt": "x", "max_completion_tokens": 513},
            "max_completion_tokens 513 exceeds the role's limit 512",
        ),
    ],
    ids=["model", "no-model", "max_tokens", "max_completion_tokens"],
)
def test_forbidden_model_or_max_tokens_is_403_naming_it_and_never_forwarded(
    roles_proxy: tuple[Proxy, Keys],
    upstream: FakeUpstream,
    body: dict[str, object],
    message: str,
) -> None:
    proxy, keys = roles_proxy
    response = httpx.post(proxy.url + "/v1/completions", json=body, headers=auth(keys.bob))
    assert response.status_code == 403, response.text
    assert message in error_of(response)["message"]
    assert upstream.received == []


def test_a_permitted_request_passes_and_gets_the_roles_max_tokens(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    glob = {"model": "qwen2.5-coder-7b", "prompt": "x", "max_tokens": 512}
    assert httpx.post(proxy.url + "/v1/completions", json=glob, headers=auth(keys.bob)).is_success
    no_limit = {"model": "tiny", "prompt": "def f():"}
    response = httpx.post(proxy.url + "/v1/completions", json=no_limit, headers=auth(keys.bob))
    assert response.status_code == 200
    assert [r.json().get("max_tokens") for r in upstream.received] == [512, 512]
    # A role without limits sends the body as it came.
    response = httpx.post(proxy.url + "/v1/completions", json=no_limit, headers=auth(keys.dave))
    assert response.status_code == 200
    assert "max_tokens" not in upstream.received[-1].json()


def test_requests_per_minute_answers_429_with_retry_after_then_refills(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    url = proxy.url + "/v1/completions"
    statuses = [httpx.post(url, json=COMPLETION, headers=auth(keys.lim)).status_code for _ in "12"]
    assert statuses == [200, 200]
    refused = httpx.post(url, json=COMPLETION, headers=auth(keys.lim))
    assert refused.status_code == 429
    retry_after = refused.headers["retry-after"]
    assert retry_after in ("1", "2")  # whole seconds, rounded up
    assert error_of(refused)["code"] == "requests_per_minute_exceeded"
    assert "role 'limited' allows 30 requests per minute" in error_of(refused)["message"]
    assert len(upstream.received) == 2
    # Another user's bucket is their own.
    assert httpx.post(url, json=COMPLETION, headers=auth(keys.dave)).status_code == 200
    time.sleep(float(retry_after))
    assert httpx.post(url, json=COMPLETION, headers=auth(keys.lim)).status_code == 200


def test_tokens_per_minute_settles_with_reported_usage_then_refuses(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    url = proxy.url + "/v1/completions"

    def ask(max_tokens: int) -> httpx.Response:
        body = {"model": "tiny", "prompt": "def f():", "max_tokens": max_tokens}
        return httpx.post(url, json=body, headers=auth(keys.meter))

    # About 80 + 15 for the prompt are taken up front; the upstream reports 8 used.
    assert ask(80).status_code == 200
    # Only because the first request was settled at 8 tokens is there room for this one.
    assert ask(70).status_code == 200
    refused = ask(99)
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "tokens_per_minute_exceeded"
    assert int(refused.headers["retry-after"]) >= 10  # ~16 tokens short at one token a second
    assert len(upstream.received) == 2


def test_tokens_per_minute_settles_with_the_usage_at_the_end_of_a_stream(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    url = proxy.url + "/v1/completions"
    streamed = {"model": "tiny", "prompt": "def f():", "max_tokens": 90, "stream": True}
    with httpx.stream("POST", url, json=streamed, headers=auth(keys.stream_meter)) as response:
        assert response.status_code == 200
        assert b'"total_tokens"' in response.read()
    # ~105 were taken for the stream; its last event reported 8, so ~85 more fit.
    again = {"model": "tiny", "prompt": "def f():", "max_tokens": 70}
    assert httpx.post(url, json=again, headers=auth(keys.stream_meter)).status_code == 200
    assert len(upstream.received) == 2


def test_admin_routes_need_an_admin_role(roles_proxy: tuple[Proxy, Keys]) -> None:
    proxy, keys = roles_proxy
    for path in ("/v1/audit/checkpoint", "/metrics"):
        for key in (keys.bob, keys.dave):
            response = httpx.get(proxy.url + path, headers=auth(key))
            assert response.status_code == 403, (path, response.text)
            assert "needs a role with admin = true" in error_of(response)["message"]
        for key in (keys.admin, keys.root):  # issued as admin; mapped to admin by [users]
            response = httpx.get(proxy.url + path, headers=auth(key))
            assert response.status_code in (200, 400), (path, response.text)
            if response.status_code == 400:  # no checkpoint signed yet: past the role check
                assert error_of(response)["code"] == "bad_proof_request"


def test_a_key_issued_later_with_an_undefined_role_is_refused(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, _ = roles_proxy
    store = proxy.keys()
    key = store.create("late", role="contractor")
    store.close()
    response = httpx.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth(key))
    assert response.status_code == 403
    assert "role 'contractor' is not defined in" in error_of(response)["message"]
    assert upstream.received == []


def test_a_non_json_body_for_a_restricted_role_is_400_and_not_forwarded(
    roles_proxy: tuple[Proxy, Keys], upstream: FakeUpstream
) -> None:
    proxy, keys = roles_proxy
    response = httpx.post(
        proxy.url + "/v1/completions",
        content=json.dumps(["not", "an", "object"]).encode(),
        headers=auth(keys.bob) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert error_of(response)["message"] == "the request body must be a JSON object"
    assert upstream.received == []


# --- live reload -----------------------------------------------------------------------------


def test_an_edited_roles_file_applies_without_a_restart_and_a_broken_one_does_not(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "home"
    key = KeyStore(data_dir / "keys.sqlite3").create("erin")
    roles_file = data_dir / "roles.toml"
    roles_file.write_text("[roles.user]\n")
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log")

    def status_within(seconds: float, want: int) -> int:
        deadline = time.monotonic() + seconds
        while True:
            response = httpx.post(
                proxy.url + "/v1/completions", json=COMPLETION, headers=auth(key, "chat")
            )
            if response.status_code == want or time.monotonic() > deadline:
                return response.status_code
            time.sleep(0.1)

    try:
        assert status_within(0, 200) == 200
        roles_file.write_text('[roles.user]\nfeatures = ["completion"]\n')
        assert status_within(3, 403) == 403  # chat is no longer the user role's
        roles_file.write_text('[roles.user]\nfeatures = ["chat"]\nmax_tokens = "many"\n')
        # Not applied: the proxy keeps the roles in force, and says why once.
        assert status_within(2, 200) == 403
        log = proxy.log()
        assert "cannot be used; keeping the roles in force" in log
        assert "roles.user.max_tokens" in log
        roles_file.write_text('[roles.user]\nfeatures = ["chat"]\n')
        assert status_within(3, 200) == 200
        assert proxy.log().count("roles reloaded from") == 2
    finally:
        stop_proxy(proxy)


def test_live_roles_pick_up_a_new_file_and_keep_theirs_when_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "roles.toml"
    live = LiveRoles(path, BUILTIN_ROLES, every_s=0)
    alice = Principal(name="alice", role="user")
    assert live.source == "built-in roles"
    path.write_text('[roles.user]\nfeatures = ["chat"]\n[users]\nalice = "user"\n')
    role = live.get(live.role_of(alice))
    assert role is not None and role.features == ("chat",)
    assert live.source == str(path)
    path.unlink()  # gone is not "no roles": the built-in defaults would allow more
    role = live.get(live.role_of(alice))
    assert role is not None and role.features == ("chat",)
