"""A real `bastion proxy` run, exported and verified offline: the log an auditor would get."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit_proxy import verify
from audit_proxy.checkpoints import Signer, read_public_key
from audit_proxy.policy.engine import evidence_digest
from bastion import audit_commands
from tests.proxy.conftest import REPO, Proxy, start_proxy, stop_proxy
from tests.proxy.fake_upstream import FakeUpstream

from .load import concurrent_load


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def run_traffic(proxy: Proxy, user: str = "alice") -> int:
    """Plain, streamed, cut and rejected requests; returns how many reached the audit layer."""
    key = proxy.keys().create(user)
    headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
    audited = 0
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=10) as client:
        for i in range(3):
            body = {"model": "tiny", "prompt": f"def f{i}():", "max_tokens": 4}
            assert client.post("/v1/completions", json=body).status_code == 200
            audited += 1
        stream = {"model": "tiny", "prompt": "x", "stream": True}
        with client.stream("POST", "/v1/completions", json=stream) as response:
            assert response.status_code == 200
            assert b"".join(response.iter_bytes())
        audited += 1
        cut = {"model": "cut", "stream": True}
        with (
            client.stream("POST", "/v1/completions", json=cut) as r,
            contextlib.suppress(httpx.HTTPError),
        ):
            b"".join(r.iter_bytes())
        audited += 1
        assert client.post("/v1/completions", json={}, headers={"Authorization": ""}).status_code
    return audited


def _exported(data_dir: Path, tmp_path: Path) -> Path:
    """`bastion audit export` of the log in `data_dir`, as an auditor runs it."""
    out = tmp_path / "export.jsonl"
    export = [sys.executable, "-m", "bastion.audit_commands", "audit", "export"]
    subprocess.run([*export, "--data-dir", str(data_dir), str(out)], check=True, cwd=REPO)
    return out


def _all_answered(proxy: Proxy, requests: int) -> None:
    deadline = time.monotonic() + 5
    while len(proxy.store().outcomes()) < requests and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_real_proxy_run_exports_and_verifies(upstream: FakeUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "bastion"
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log")
    try:
        audited = run_traffic(proxy)
        # Outcomes are written when each response has ended: wait for the last one.
        deadline = time.monotonic() + 5
        while len(proxy.store().outcomes()) < audited and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_proxy(proxy)
    assert (data_dir / "audit-signing-key.pem").stat().st_mode & 0o777 == 0o600

    out = tmp_path / "export.jsonl"
    # The CLI as an auditor runs it, in its own process.
    env_cmd = [sys.executable, "-m", "bastion.audit_commands"]
    subprocess.run(
        [*env_cmd, "audit", "export", "--data-dir", str(data_dir), str(out)],
        check=True,
        cwd=REPO,
    )
    result = subprocess.run(
        [*env_cmd, "audit", "verify", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = 2 * audited
    assert result.stdout.startswith(f"OK: {records} records"), result.stdout
    assert f"signed through size {records}" in result.stdout
    assert f"{records} payloads checked" in result.stdout

    entries = [json.loads(line) for line in out.read_text().splitlines()]
    outcomes = [e["record"] for e in entries if e.get("kind") == "outcome"]
    assert {o["aborted_by"] for o in outcomes} == {None, "upstream"}

    # One edited byte of one recorded answer, and the export no longer verifies.
    lines = out.read_text().splitlines()
    position = next(i for i, e in enumerate(entries) if e.get("kind") == "outcome")
    entry = entries[position]
    entry["record"]["bytes_out"] += 1
    lines[position] = json.dumps(entry)
    out.write_text("\n".join(lines) + "\n")
    assert audit_commands.main(["audit", "verify", str(out)]) == 1


def test_admin_route_serves_proofs_that_verify(upstream: FakeUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "bastion"
    first = start_proxy(upstream.url, data_dir, tmp_path / "proxy1.log")
    try:
        audited = run_traffic(first)
        deadline = time.monotonic() + 5
        while len(first.store().outcomes()) < audited and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_proxy(first)  # signs the checkpoint the second run proves against
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy2.log")
    try:
        admin = {"Authorization": f"Bearer {proxy.keys().create('root', role='admin')}"}
        user = {"Authorization": f"Bearer {proxy.keys().create('bob')}"}
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            assert client.get("/v1/audit/checkpoint").status_code == 401
            denied = client.get("/v1/audit/proof?seq=0", headers=user)
            assert denied.status_code == 403 and "admin" in denied.text
            head = client.get("/v1/audit/checkpoint", headers=admin).json()
            assert head["size"] == 2 * audited
            for seq in (0, head["size"] - 1):
                proof = client.get(f"/v1/audit/proof?seq={seq}", headers=admin).json()
                assert verify.verify_proof(proof, bytes.fromhex(head["public_key"])) is None
                proof["seq"] = seq ^ 1
                assert verify.verify_proof(proof) is not None
            consistency = client.get("/v1/audit/consistency?from=2", headers=admin)
            assert consistency.status_code == 400  # no checkpoint of size 2 in this log
            bad = client.get(f"/v1/audit/proof?seq={head['size']}", headers=admin)
            assert bad.status_code == 400
    finally:
        stop_proxy(proxy)


def test_a_proxy_restarted_after_a_key_rotation_signs_with_the_new_key(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "bastion"
    first = start_proxy(upstream.url, data_dir, tmp_path / "proxy1.log")
    try:
        before = run_traffic(first)
    finally:
        stop_proxy(first)
    pinned = read_public_key(data_dir / "audit-signing-key.pub")
    env_cmd = [sys.executable, "-m", "bastion.audit_commands"]
    rotate = [*env_cmd, "audit", "rotate-key", "--data-dir", str(data_dir)]
    done = subprocess.run(rotate, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy2.log")
    try:
        after = run_traffic(proxy, user="carol")
        deadline = time.monotonic() + 5
        while len(proxy.store().outcomes()) < before + after and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_proxy(proxy)  # its last checkpoint, by the new key, covers the new records
    prove = [*env_cmd, "audit", "prove", "--data-dir", str(data_dir), str(2 * before)]
    proved = subprocess.run(prove, capture_output=True, text=True, cwd=REPO, check=True)
    proof = json.loads(proved.stdout)
    assert bytes.fromhex(proof["public_key"]) == pinned
    assert len(proof["key_transitions"]) == 1 and "key_id" in proof["checkpoint"]
    assert verify.verify_proof(proof, pinned) is None
    report = verify.verify_export_file(_exported(data_dir, tmp_path), pinned)
    assert report.ok, report.problems
    assert (report.key_transitions, report.records) == (1, 2 * (before + after))
    assert report.payloads_checked == report.records


def test_a_running_proxy_rotates_its_key_on_the_admin_route(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "bastion"
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log")
    env_cmd = [sys.executable, "-m", "bastion.audit_commands"]
    try:
        pinned = read_public_key(data_dir / "audit-signing-key.pub")
        admin = {"Authorization": f"Bearer {proxy.keys().create('root', role='admin')}"}
        user = {"Authorization": f"Bearer {proxy.keys().create('bob')}"}
        audited = run_traffic(proxy)
        key_ids = []
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            denied = client.post("/v1/audit/rotate-key", headers=user)
            assert denied.status_code == 403 and "admin" in denied.text
            assert client.get("/v1/audit/rotate-key", headers=admin).status_code == 405
            for round_ in range(2):  # twice: the second from the key the first brought in
                _all_answered(proxy, audited)
                rotated = client.post("/v1/audit/rotate-key", headers=admin)
                assert rotated.status_code == 200, rotated.text
                doc = rotated.json()
                assert doc["size"] == 2 * audited and doc["rewrapped"] == 2 * audited
                key_ids.append((doc["from_key_id"], doc["to_key_id"]))
                audited += run_traffic(proxy, user=f"after-{round_}")
        # New policy evidence is keyed by the key in force, not the one the proxy started with.
        secret = "ghp_" + "aB3" * 12
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            body = {"model": "tiny", "prompt": f'token = "{secret}"'}
            assert client.post("/v1/completions", json=body, headers=user).status_code == 200
        audited += 1
        _all_answered(proxy, audited)
        store = proxy.store()
        try:
            (finding,) = json.loads(store.requests()[-1].policy or "")["findings"]
        finally:
            store.close()
        current = Signer.load(data_dir)
        assert current.key_id == key_ids[1][1]
        assert finding["hmac_sha256"] == evidence_digest(current.evidence_key(), secret)
        # The command refuses while the proxy holds the log, and names the route.
        rotate = [*env_cmd, "audit", "rotate-key", "--data-dir", str(data_dir)]
        refused = subprocess.run(rotate, capture_output=True, text=True, cwd=REPO, check=False)
        assert refused.returncode == 1 and "/v1/audit/rotate-key" in refused.stderr
    finally:
        stop_proxy(proxy)  # its last checkpoint is the second new key's
    assert key_ids[1][0] == key_ids[0][1]
    assert " CRITICAL " not in proxy.log()  # it never tried to sign with a retired key
    assert "audit-signing-key.next.pem" not in {p.name for p in data_dir.iterdir()}
    report = verify.verify_export_file(_exported(data_dir, tmp_path), pinned)
    assert report.ok, report.problems
    assert (report.key_transitions, report.records) == (2, 2 * audited)
    assert report.signed_size == report.payloads_checked == report.records


def test_a_rotation_on_the_admin_route_under_concurrent_load_loses_nothing(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data_dir = tmp_path / "bastion"
    proxy = start_proxy(upstream.url, data_dir, tmp_path / "proxy.log")
    try:
        pinned = read_public_key(data_dir / "audit-signing-key.pub")
        admin = {"Authorization": f"Bearer {proxy.keys().create('root', role='admin')}"}
        key = proxy.keys().create("alice")
        rotated: list[httpx.Response] = []
        rotator = threading.Thread(
            target=lambda: rotated.append(
                httpx.post(proxy.url + "/v1/audit/rotate-key", headers=admin, timeout=60)
            )
        )

        def rotate_at(done: int) -> None:
            if done == 100:
                rotator.start()

        results = asyncio.run(concurrent_load([proxy.url], key, 400, 16, rotate_at))
        rotator.join(60)
        _all_answered(proxy, 400)
    finally:
        stop_proxy(proxy)
    assert rotated and rotated[0].status_code == 200, rotated[0].text if rotated else None
    assert Counter(status for _, status, _ in results) == {200: 400}
    assert 200 <= rotated[0].json()["size"] < 800  # mid-load
    report = verify.verify_export_file(_exported(data_dir, tmp_path), pinned)
    assert report.ok, report.problems
    assert (report.key_transitions, report.records, report.signed_size) == (1, 800, 800)
    assert report.payloads_checked == 800


def test_the_log_survives_kill_9_and_verifies(upstream: FakeUpstream, tmp_path: Path) -> None:
    data_dir = tmp_path / "bastion"
    total = 0
    for cycle in range(2):
        proxy = start_proxy(upstream.url, data_dir, tmp_path / f"proxy{cycle}.log")
        total += run_traffic(proxy, f"user{cycle}")
        deadline = time.monotonic() + 5
        while len(proxy.store().outcomes()) < total and time.monotonic() < deadline:
            time.sleep(0.02)
        if cycle == 0:
            proxy.process.kill()  # no shutdown checkpoint: the next run must sign the tail
            proxy.process.wait(10)
        else:
            stop_proxy(proxy)
    out = tmp_path / "export.jsonl"
    assert audit_commands.main(["audit", "export", "--data-dir", str(data_dir), str(out)]) == 0
    report = verify.verify_export_file(out)
    assert report.ok, report.problems
    assert report.records == report.signed_size == 2 * total
