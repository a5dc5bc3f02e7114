"""Several proxy replicas, one audit log in a real PostgreSQL (started by scripts/postgres.sh).

The store alone, three real `bastion proxy` processes under concurrent load, one of them killed
with SIGKILL mid-load, schema migrations, and the database going away (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from audit_proxy import verify
from audit_proxy.checkpoints import Signer
from audit_proxy.config import ConfigError, load_config
from audit_proxy.export import AuditDatabase, export_log
from audit_proxy.keys import KeyStore
from audit_proxy.pg_migrations import LATEST, migrate, schema_version
from audit_proxy.pg_store import PostgresAuditStore
from audit_proxy.siem import JsonlSink, SiemForwarder
from audit_proxy.store import AuditStore, AuditStoreUnavailable
from audit_proxy.verify_siem import verify_siem_copy
from tests.proxy.conftest import REPO, Proxy, start_proxy, stop_proxy
from tests.proxy.fake_upstream import FakeUpstream

from .load import concurrent_load
from .pg_fixture import PgCluster
from .records import record_outcome, record_request

PASSWORD_ENV = "BASTION_STORE_PASSWORD"
ANSWER = b'{"choices": []}'


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def _record_pairs(store: PostgresAuditStore | AuditStore, count: int) -> list[str]:
    """`count` concurrent request + outcome pairs, as the audit layer writes them."""

    async def pair(i: int) -> str:
        body = json.dumps({"prompt": f"def f{i}():"}).encode()
        request_id = await record_request(store, body, stream=i % 2 == 0, client="127.0.0.1:5000")
        # 3.25, not 3: a whole-number float is stored differently by the two databases.
        await record_outcome(store, request_id, ANSWER, usage=None, latency_ms=3.25, ttfb_ms=1.5)
        return request_id

    async def run() -> list[str]:
        return list(await asyncio.gather(*(pair(i) for i in range(count))))

    return asyncio.run(run())


def _verified(data_dir: Path, url: str, password: str) -> verify.Report:
    out = io.StringIO()
    export_log(data_dir, out, database=AuditDatabase(url, password))
    key = Signer.load_or_create(data_dir).public_key
    return verify.verify_export(out.getvalue().splitlines(), key)


def _assert_one_gapless_log(store: PostgresAuditStore, request_ids: set[str]) -> None:
    leaves = store.leaves()
    assert [leaf[0] for leaf in leaves] == list(range(len(leaves)))
    kinds = Counter((leaf[1], leaf[2]) for leaf in leaves)
    for request_id in request_ids:
        assert kinds[("request", request_id)] == 1, request_id
        assert kinds[("outcome", request_id)] == 1, request_id


# -- (a) the store alone ----------------------------------------------------------------------


def test_store_records_leaves_and_signed_checkpoints_that_verify(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    signer = Signer.load_or_create(tmp_path)
    store = PostgresAuditStore(db_url, cluster.password, signer=signer, checkpoint_every=64)
    ids = _record_pairs(store, 100)
    _assert_one_gapless_log(store, set(ids))
    assert store.commits < 200  # concurrent records shared transactions
    # Each leaf is the canonical JSON of its row as stored (payload and table seq left out).
    with psycopg.connect(db_url, password=cluster.password) as conn:
        row = conn.execute("SELECT * FROM requests WHERE id = %s", (ids[7],))
        names = [column.name for column in row.description or ()]
        stored = dict(zip(names, row.fetchone() or (), strict=True))
    record = {k: v for k, v in stored.items() if k not in ("seq", "body")}
    canonical = {leaf[2]: leaf[4] for leaf in store.leaves() if leaf[1] == "request"}[ids[7]]
    assert json.loads(canonical)["record"] == record
    store.close()

    reopened = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    checkpoints = reopened.checkpoints()
    reopened.close()
    assert checkpoints[-1].size == 200  # signed at close
    assert len(checkpoints) >= 2  # and once 64 records were unsigned, on the way
    report = _verified(tmp_path, db_url, cluster.password)
    assert report.first_problem() is None, report.problems
    assert (report.records, report.signed_size, report.payloads_checked) == (200, 200, 200)


def test_leaves_have_the_same_shape_as_the_sqlite_stores(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    def shapes(store: PostgresAuditStore | AuditStore) -> dict[str, dict[str, str]]:
        _record_pairs(store, 1)
        found = {}
        for _, kind, _, _, canonical in store.leaves():
            record = json.loads(canonical)["record"]
            found[kind] = {key: type(value).__name__ for key, value in record.items()}
        store.close()
        return found

    pg = shapes(PostgresAuditStore(db_url, cluster.password))
    sqlite = shapes(AuditStore(tmp_path / "audit.sqlite3"))
    assert pg == sqlite
    assert pg["request"]["stream"] == "int" and pg["outcome"]["latency_ms"] == "float"


def test_a_bad_record_fails_alone_and_says_so(cluster: PgCluster, db_url: str) -> None:
    store = PostgresAuditStore(db_url, cluster.password)
    (request_id,) = _record_pairs(store, 1)

    async def duplicate_and_fresh() -> list[object]:
        outcome = store.record_outcome(
            request_id,
            status=200,
            response_body=b"",
            sha256="00" * 32,
            usage=None,
            finish_reason=None,
            latency_ms=1.0,
            ttfb_ms=None,
            aborted_by=None,
            completed=True,
        )
        fresh = store.record_request(
            user="bob",
            role="user",
            method="POST",
            route="/v1/chat/completions",
            feature="chat",
            model=None,
            stream=False,
            body=b"{}",
        )
        return list(await asyncio.gather(outcome, fresh, return_exceptions=True))

    duplicate, fresh = asyncio.run(duplicate_and_fresh())
    store.close()
    assert isinstance(duplicate, AuditStoreUnavailable)
    assert "duplicate key" in str(duplicate) and cluster.password not in str(duplicate)
    assert isinstance(fresh, str)


# -- (b), (c) real proxy replicas -------------------------------------------------------------


@contextlib.contextmanager
def running_replicas(
    upstream: FakeUpstream, data_dir: Path, config: Path, count: int, tmp_path: Path
) -> Iterator[list[Proxy]]:
    """`count` proxy processes sharing one data dir (keys, signing key) and one database,
    against a cleared upstream; each stops (and signs a last checkpoint) on the way out."""
    upstream.clear()
    started = [
        start_proxy(
            upstream.url,
            data_dir,
            tmp_path / f"replica{i}.log",
            "--config",
            str(config),
            wait=False,
        )
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + 30
        for proxy in started:
            while True:
                assert proxy.process.poll() is None, proxy.log()
                try:
                    if httpx.get(proxy.url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, proxy.log()
                time.sleep(0.05)
        yield started
    finally:
        for proxy in started:
            stop_proxy(proxy)


def _audit_cli(data_dir: Path, db_url: str, *args: str) -> str:
    """`bastion audit ARGS --data-dir D --store-url URL` (password from the environment)."""
    where = ("--data-dir", str(data_dir), "--store-url", db_url)
    done = subprocess.run(
        [sys.executable, "-m", "bastion.audit_commands", "audit", *args, *where],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _export_with_cli(data_dir: Path, db_url: str, out: Path) -> verify.Report:
    _audit_cli(data_dir, db_url, "export", str(out))
    return verify.verify_export_file(out, Signer.load_or_create(data_dir).public_key)


def test_three_replicas_write_one_gapless_log_that_verifies(
    cluster: PgCluster,
    db_url: str,
    upstream: FakeUpstream,
    tmp_path: Path,
    replica_home: tuple[Path, Path, str],
) -> None:
    data_dir, config, key = replica_home
    with running_replicas(upstream, data_dir, config, 3, tmp_path) as replicas:
        results = asyncio.run(concurrent_load([p.url for p in replicas], key, 300, 30))
    assert Counter(status for _, status, _ in results) == {200: 300}
    assert Counter(replica for replica, _, _ in results) == {0: 100, 1: 100, 2: 100}
    assert len(upstream.received) == 300
    ids = {request_id for _, _, request_id in results if request_id}
    store = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    try:
        _assert_one_gapless_log(store, ids)
        assert len(store.leaves()) == 600
        assert store.checkpoints()[-1].size == 600
    finally:
        store.close()
    report = _export_with_cli(data_dir, db_url, tmp_path / "export.jsonl")
    assert report.first_problem() is None, report.problems
    assert (report.records, report.signed_size) == (600, 600)
    assert oct((tmp_path / "export.jsonl").stat().st_mode & 0o777) == "0o600"
    proof = json.loads(_audit_cli(data_dir, db_url, "prove", "123"))
    assert verify.verify_proof(proof, Signer.load_or_create(data_dir).public_key) is None
    tail = [
        json.loads(line) for line in _audit_cli(data_dir, db_url, "tail", "-n", "2").splitlines()
    ]
    assert [entry["seq"] for entry in tail] == [598, 599]


def test_a_replica_killed_mid_load_leaves_no_gap_and_the_others_carry_on(
    cluster: PgCluster,
    db_url: str,
    upstream: FakeUpstream,
    tmp_path: Path,
    replica_home: tuple[Path, Path, str],
) -> None:
    data_dir, config, key = replica_home
    killed = threading.Event()
    with running_replicas(upstream, data_dir, config, 3, tmp_path) as replicas:
        victim = replicas[0]

        def kill_at_a_third(done: int) -> None:
            if done >= 80 and not killed.is_set():
                killed.set()
                os.kill(victim.process.pid, signal.SIGKILL)

        results = asyncio.run(
            concurrent_load([p.url for p in replicas], key, 300, 24, kill_at_a_third)
        )
    assert killed.is_set() and victim.process.returncode == -signal.SIGKILL
    survivors = [(status, rid) for replica, status, rid in results if replica != 0]
    assert Counter(status for status, _ in survivors) == {200: 200}
    lost = [status for replica, status, _ in results if replica == 0 and status != 200]
    assert lost, "the kill should have cost the victim some requests"
    answered = {rid for _, status, rid in results if status == 200 and rid}
    store = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    try:
        _assert_one_gapless_log(store, answered)
        requested = {leaf[2] for leaf in store.leaves() if leaf[1] == "request"}
    finally:
        store.close()
    # Nothing reached the model server without its record.
    forwarded = {
        next(v for k, v in got.headers.items() if k.lower() == "x-request-id")
        for got in upstream.received
    }
    assert forwarded <= requested
    report = _export_with_cli(data_dir, db_url, tmp_path / "export.jsonl")
    assert report.first_problem() is None, report.problems
    assert report.signed_size == report.records


def test_replicas_sharing_a_data_dir_follow_a_key_rotation_midconcurrent_load(
    cluster: PgCluster,
    db_url: str,
    upstream: FakeUpstream,
    tmp_path: Path,
    replica_home: tuple[Path, Path, str],
) -> None:
    data_dir, config, key = replica_home
    pinned = Signer.load(data_dir).public_key
    admin_key = KeyStore(data_dir / "keys.sqlite3").create("root", role="admin")
    admin = {"Authorization": f"Bearer {admin_key}"}
    rotated: list[httpx.Response] = []
    with running_replicas(upstream, data_dir, config, 2, tmp_path) as replicas:
        urls = [p.url for p in replicas]
        # Replica 0 rotates on its admin route; replica 1 shares its data dir.
        rotator = threading.Thread(
            target=lambda: rotated.append(
                httpx.post(urls[0] + "/v1/audit/rotate-key", headers=admin, timeout=60)
            )
        )
        results = asyncio.run(concurrent_load(urls, key, 100, 8))
        rotator.start()  # while the next requests run
        results += asyncio.run(concurrent_load(urls, key, 300, 8))
        rotator.join(60)
        results += asyncio.run(concurrent_load(urls, key, 100, 8))  # after it, for certain
    assert rotated and rotated[0].status_code == 200, rotated[0].text if rotated else None
    assert Counter(status for _, status, _ in results) == {200: 500}
    new_key = Signer.load(data_dir)
    # No replica was restarted: the one that signed next took up the new key from the data dir.
    assert any(f"now signs with {new_key.key_id[:16]}" in p.log() for p in replicas)
    store = PostgresAuditStore(db_url, cluster.password, migrate_schema=False)
    try:
        (transition,) = store.key_transitions()
        late = [c for c in store.checkpoints() if c.size > transition.size]
    finally:
        store.close()
    # Every record after the rotation is under a checkpoint of the new key.
    assert late and {c.key_id for c in late} == {new_key.key_id}
    out = tmp_path / "export.jsonl"
    _audit_cli(data_dir, db_url, "export", str(out))
    report = verify.verify_export_file(out, pinned)
    assert report.first_problem() is None, report.problems
    assert report.key_transitions == 1
    assert (report.records, report.signed_size, report.payloads_checked) == (1000, 1000, 1000)


# -- (d) migrations ---------------------------------------------------------------------------


def test_an_older_schema_is_upgraded_at_start(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
        migrate(conn, target=1)
        assert schema_version(conn) == 1
        assert conn.execute("SELECT to_regclass('log_identity')").fetchone() == (None,)
    signer = Signer.load_or_create(tmp_path)
    store = PostgresAuditStore(db_url, cluster.password, signer=signer)
    _record_pairs(store, 2)
    store.close()
    with psycopg.connect(db_url, password=cluster.password) as conn:
        assert schema_version(conn) == LATEST
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, LATEST + 1)]
        assert conn.execute("SELECT log_id FROM log_identity").fetchall() == [(signer.log_id,)]


def test_stores_opening_at_once_migrate_once(cluster: PgCluster, db_url: str) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresAuditStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(PostgresAuditStore(db_url, cluster.password))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in opened:
        store.close()
    assert errors == [] and len(opened) == 4
    with psycopg.connect(db_url, password=cluster.password) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, LATEST + 1)]


def test_a_newer_schema_or_another_signing_key_is_refused(
    cluster: PgCluster, db_url: str, tmp_path: Path
) -> None:
    PostgresAuditStore(db_url, cluster.password, signer=Signer.load_or_create(tmp_path)).close()
    with pytest.raises(AuditStoreUnavailable, match="give every replica the same"):
        PostgresAuditStore(db_url, cluster.password, signer=Signer.load_or_create(tmp_path / "b"))
    with psycopg.connect(db_url, password=cluster.password, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(AuditStoreUnavailable, match="schema version 99, newer"):
        PostgresAuditStore(db_url, cluster.password)


def test_a_wrong_password_is_a_clear_error_without_the_password(cluster: PgCluster) -> None:
    wrong = "not-the-password-0123"
    with pytest.raises(AuditStoreUnavailable, match="password authentication failed") as caught:
        PostgresAuditStore(cluster.url.replace("bastion@", f"bastion:{wrong}@"))
    assert wrong not in str(caught.value) and "bastion:***@" in str(caught.value)


# -- configuration ----------------------------------------------------------------------------


def test_the_store_password_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "store.password"
    secret.write_text("from-the-file\n")
    config = tmp_path / "proxy.toml"
    config.write_text(
        'store_url = "postgresql://bastion@db.internal:5432/audit"\n'
        f'store_password_file = "{secret}"\n'
    )
    loaded = load_config(config, environ={})
    assert loaded.store_url == "postgresql://bastion@db.internal:5432/audit"
    assert loaded.store_password is not None
    assert loaded.store_password.get_secret_value() == "from-the-file"
    assert "from-the-file" not in repr(loaded)
    from_env = load_config(config, environ={PASSWORD_ENV: "from-the-env"})
    assert from_env.store_password is not None
    assert from_env.store_password.get_secret_value() == "from-the-env"


def test_a_bad_store_url_is_named_without_echoing_it(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('store_url = "mysql://bastion:hunter2@db/audit"\n')
    with pytest.raises(ConfigError, match=r"proxy.toml: store_url: .*postgresql://") as caught:
        load_config(config, environ={})
    assert "hunter2" not in str(caught.value)
    config.write_text('store_password_file = "/nonexistent/pw"\n')
    with pytest.raises(ConfigError, match="store_password_file: cannot read /nonexistent/pw"):
        load_config(config, environ={})


# -- (e) fail closed --------------------------------------------------------------------------


def test_database_down_means_503_and_nothing_upstream_then_recovery(
    cluster: PgCluster,
    db_url: str,
    upstream: FakeUpstream,
    tmp_path: Path,
    replica_home: tuple[Path, Path, str],
) -> None:
    data_dir, config, key = replica_home
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "x"}
    with (
        running_replicas(upstream, data_dir, config, 1, tmp_path) as (proxy,),
        httpx.Client(base_url=proxy.url, headers=headers, timeout=20) as client,
    ):
        assert client.post("/v1/completions", json=body).status_code == 200
        cluster.stop()
        try:
            upstream.clear()
            answers = [client.post("/v1/completions", json=body) for _ in range(3)]
            assert [a.status_code for a in answers] == [503, 503, 503]
            assert answers[0].json()["error"]["code"] == "audit_store_unavailable"
            assert upstream.received == []
        finally:
            cluster.start()
        # The store reconnects by itself once the database is back.
        assert client.post("/v1/completions", json=body).status_code == 200
    assert cluster.password not in proxy.log()
    assert len(upstream.received) == 1


class ShippingReplicas:
    """Two replicas of one log, each with a SIEM forwarder to a JSONL file of its own."""

    def __init__(self, cluster: PgCluster, db_url: str, tmp_path: Path) -> None:
        self.signer = Signer.load_or_create(tmp_path)
        self.stores = [PostgresAuditStore(db_url, cluster.password, self.signer) for _ in "ab"]
        self.sinks = [JsonlSink(tmp_path / f"replica-{i}.jsonl") for i in range(2)]
        self.forwarders = []
        for store, sink in zip(self.stores, self.sinks, strict=True):
            cursors, leadership = store.siem_coordination()
            self.forwarders.append(
                SiemForwarder(store, [sink], cursors, self.signer.log_id, leadership=leadership)
            )

    def record_and_ship(self, pairs: int) -> None:
        """`pairs` request + outcome pairs through the first replica, a checkpoint over them,
        and a pass of each forwarder."""
        _record_pairs(self.stores[0], pairs)
        self.stores[0].checkpoint()
        for forwarder in self.forwarders:
            forwarder.run_once()

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.stop()
        for store in self.stores:
            store.close()


@pytest.fixture
def replicas(cluster: PgCluster, db_url: str, tmp_path: Path) -> Iterator[ShippingReplicas]:
    shipping = ShippingReplicas(cluster, db_url, tmp_path)
    yield shipping
    shipping.close()


def test_one_replica_ships_to_the_siem_and_another_takes_over_from_its_cursor(
    replicas: ShippingReplicas,
) -> None:
    stores, sinks, forwarders = replicas.stores, replicas.sinks, replicas.forwarders
    replicas.record_and_ship(5)
    # The first to ask took the lock; the other stands by and ships nothing.
    assert [f.status()["jsonl"]["leading"] for f in forwarders] == [1, 0]
    assert [len(_shipped(sink)) for sink in sinks] == [10, 0]
    _record_pairs(stores[1], 3)
    stores[1].checkpoint()
    forwarders[1].run_once()
    assert _shipped(sinks[1]) == []
    forwarders[0].stop()  # the leader goes (its session, and with it the lock, ends)
    deadline = time.monotonic() + 10
    while True:  # the server ends the session a moment after the client hangs up
        forwarders[1].run_once()
        if forwarders[1].status()["jsonl"]["leading"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert forwarders[1].status()["jsonl"]["leading"] == 1
    # It carries on from the shared cursors: every leaf and checkpoint shipped once, in order.
    assert _shipped(sinks[0]) + _shipped(sinks[1]) == list(range(16))
    copy = [line for sink in sinks for line in sink.path.read_text().splitlines()]
    assert [json.loads(line)["size"] for line in copy if '"checkpoint"' in line] == [10, 16]
    # Together, the two halves are a SIEM copy that verifies against the log's key.
    report = verify_siem_copy(copy, replicas.signer.log_public_key)
    assert report.ok, [str(p) for p in report.problems]
    assert report.signed_size == 16


def test_the_replica_that_ships_takes_a_resend_asked_through_the_database(
    replicas: ShippingReplicas,
    cluster: PgCluster,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sinks, forwarders = replicas.sinks, replicas.forwarders
    replicas.record_and_ship(4)
    assert [_shipped(sink) for sink in sinks] == [list(range(8)), []]

    monkeypatch.setenv(PASSWORD_ENV, cluster.password)
    said = _audit_cli(tmp_path, db_url, "siem-resend", "--from", "5", "--sink", "jsonl")
    assert "from seq 5" in said
    forwarders[1].run_once()  # standing by: it leaves the request to the one that ships
    forwarders[0].run_once()
    assert [_shipped(sink) for sink in sinks] == [[*range(8), 5, 6, 7], []]
    copy = sinks[0].path.read_text().splitlines()
    assert [json.loads(line)["size"] for line in copy if '"checkpoint"' in line] == [8, 8]
    forwarders[0].run_once()  # the request is taken once
    assert len(_shipped(sinks[0])) == 11
    with psycopg.connect(db_url, password=cluster.password) as conn:
        assert conn.execute("SELECT count(*) FROM siem_resend").fetchone() == (0,)


def _shipped(sink: JsonlSink) -> list[int]:
    if not sink.path.exists():
        return []
    lines = map(json.loads, sink.path.read_text().splitlines())
    return [line["seq"] for line in lines if line["type"] == "leaf"]
