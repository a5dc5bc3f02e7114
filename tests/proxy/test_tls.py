"""TLS on both sides of a real proxy: its listener, and an https model server with a private CA."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import SERVICE_KEY, Proxy, start_proxy, stop_proxy
from .fake_upstream import FakeUpstream
from .pki import Authority, write_key


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    cert: Path
    key: Path
    other_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost that it signed."""
    authority = Authority.create(directory)
    server = authority.issue("server", server=True, hosts=("127.0.0.1", "localhost"))
    pki = Pki(authority.cert, server.cert, server.key, directory / "x.key")
    write_key(pki.other_key, ec.generate_private_key(ec.SECP256R1()))
    return pki


class TlsUpstream(FakeUpstream):
    """The recording fake model server, serving https with the test CA's certificate."""

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self.url = f"https://127.0.0.1:{self.port}"
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(pki.cert, pki.key)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def upstream(pki: Pki) -> Iterator[FakeUpstream]:
    fake = TlsUpstream(pki).start()
    yield fake
    fake.stop()


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


def start_tls_proxy(upstream: FakeUpstream, pki: Pki, home: Path, *extra: str) -> Proxy:
    proxy = start_proxy(
        upstream.url,
        home / "data",
        home / "proxy.log",
        "--tls-certfile",
        str(pki.cert),
        "--tls-keyfile",
        str(pki.key),
        *extra,
        wait=False,
    )
    proxy.url = proxy.url.replace("http://", "https://")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise RuntimeError(f"proxy exited with {proxy.process.returncode}:\n{proxy.log()}")
        try:
            httpx.get(proxy.url + "/healthz", verify=trusting(pki), timeout=1)
            return proxy
        except httpx.TransportError:
            time.sleep(0.05)
    stop_proxy(proxy)
    raise RuntimeError(f"proxy did not come up over TLS:\n{proxy.log()}")


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("tls-proxy")
    running = start_tls_proxy(upstream, pki, home, "--upstream-ca-file", str(pki.ca_cert))
    yield running
    stop_proxy(running)


@pytest.fixture(scope="module")
def proxy_without_ca(
    upstream: FakeUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("tls-proxy-no-ca")
    running = start_tls_proxy(upstream, pki, home)
    yield running
    stop_proxy(running)


def _post(proxy: Proxy, pki: Pki, key: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        proxy.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        verify=trusting(pki),
        timeout=10,
    )


def test_the_proxy_serves_https_with_the_configured_certificate(proxy: Proxy, pki: Pki) -> None:
    answer = httpx.get(proxy.url + "/healthz", verify=trusting(pki), timeout=5)

    assert answer.status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(proxy.url.replace("https://", "http://") + "/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(proxy.url + "/healthz", timeout=5)


def test_an_https_upstream_with_a_private_ca_works_with_upstream_ca_file(
    proxy: Proxy, pki: Pki, upstream: FakeUpstream, user_key: str
) -> None:
    answer = _post(proxy, pki, user_key, {"model": "fake", "prompt": "x = ", "max_tokens": 2})

    assert answer.status_code == 200, answer.text
    assert [r.path for r in upstream.received] == ["/v1/completions"]
    assert upstream.received[0].headers["authorization"] == f"Bearer {SERVICE_KEY}"


def test_the_fim_template_lookup_trusts_the_same_ca(
    proxy: Proxy, pki: Pki, upstream: FakeUpstream, user_key: str
) -> None:
    # The fake's tokenizer has no FIM tokens: a 400 shows the lookup itself got through TLS.
    answer = _post(proxy, pki, user_key, {"model": "fake", "prompt": "a", "suffix": "b"})

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "suffix_unsupported"
    assert any(r.path == "/tokenize" for r in upstream.received)


def test_without_the_ca_the_proxy_fails_closed_with_a_clear_502(
    proxy_without_ca: Proxy, pki: Pki, upstream: FakeUpstream
) -> None:
    key = proxy_without_ca.keys().create("bob")
    answer = _post(proxy_without_ca, pki, key, {"model": "fake", "prompt": "x", "max_tokens": 2})

    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_tls_failed"
    assert "upstream_ca_file" in error["message"] and upstream.url in error["message"]
    assert upstream.received == []
    (outcome,) = proxy_without_ca.store().outcomes()
    assert outcome.status == 502 and outcome.aborted_by == "upstream"

    lookup = _post(proxy_without_ca, pki, key, {"model": "fake", "prompt": "a", "suffix": "b"})
    assert lookup.status_code == 502
    assert lookup.json()["error"]["code"] == "fim_template_lookup_failed"
    assert "TLS" in lookup.json()["error"]["message"]
    assert upstream.received == []


def test_no_key_material_in_the_log(proxy: Proxy, pki: Pki) -> None:
    log = proxy.log()
    assert "https://127.0.0.1" in log
    key_body = pki.key.read_text().splitlines()[1]
    assert key_body not in log and SERVICE_KEY not in log
    assert "PRIVATE KEY" not in log


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cert only", "tls_certfile is set but tls_keyfile is not"),
        ("key only", "tls_keyfile is set but tls_certfile is not"),
        ("missing key", "tls_keyfile: cannot read"),
        ("unreadable cert", "tls_certfile: cannot read"),
        ("key of another cert", "check that the key belongs to the certificate"),
        ("missing CA", "upstream_ca_file: cannot read"),
        ("CA not PEM", "not a PEM bundle"),
    ],
)
def test_the_proxy_refuses_to_start_with_unusable_tls_files(
    pki: Pki, tmp_path: Path, case: str, expected: str
) -> None:
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    cert, key = ["--tls-certfile", str(pki.cert)], ["--tls-keyfile", str(pki.key)]
    args = {
        "cert only": cert,
        "key only": key,
        "missing key": [*cert, "--tls-keyfile", str(tmp_path / "nope.key")],
        "unreadable cert": ["--tls-certfile", str(unreadable), *key],
        "key of another cert": [*cert, "--tls-keyfile", str(pki.other_key)],
        "missing CA": ["--upstream-ca-file", str(tmp_path / "nope.pem")],
        "CA not PEM": ["--upstream-ca-file", str(not_pem)],
    }[case]
    if case == "unreadable cert" and os.geteuid() == 0:
        # root reads any file; a directory is unreadable as a PEM file for everyone.
        args[1] = str(tmp_path)
    proxy = start_proxy(
        "http://127.0.0.1:9", tmp_path / "home", tmp_path / "log", *args, wait=False
    )

    assert proxy.process.wait(20) == 2
    assert expected in proxy.log()
