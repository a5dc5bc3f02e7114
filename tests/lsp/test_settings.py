from pathlib import Path

import pytest

from lsp_server.settings import Settings, parse_settings


def test_defaults_when_nothing_is_given() -> None:
    settings, problems = parse_settings(None)
    assert settings == Settings()
    assert problems == []


def test_camel_case_keys_flat_or_under_bastion() -> None:
    flat, _ = parse_settings({"proxyUrl": "https://proxy.corp:8443/", "maxTokens": 64})
    nested, _ = parse_settings({"bastion": {"proxyUrl": "https://proxy.corp:8443/"}})
    assert flat.proxy_url == nested.proxy_url == "https://proxy.corp:8443"
    assert flat.max_tokens == 64


def test_each_bad_key_is_named_and_the_rest_kept() -> None:
    settings, problems = parse_settings(
        {"maxTokens": "lots", "proxyUrl": "ftp://x", "temperatur": 1, "temperature": 0.7}
    )
    assert {p.key for p in problems} == {"maxTokens", "proxyUrl", "temperatur"}
    assert settings.temperature == 0.7
    assert settings.max_tokens == Settings().max_tokens
    assert "unknown setting" in str(next(p for p in problems if p.key == "temperatur"))
    assert "Using the default" in str(problems[0])


def test_missing_ca_bundle_is_rejected_by_name(tmp_path: Path) -> None:
    _, problems = parse_settings({"caBundle": str(tmp_path / "nope.pem")})
    assert [p.key for p in problems] == ["caBundle"]
    assert "no such file" in problems[0].message


def test_api_key_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("bst_from_file\n")
    monkeypatch.setenv("BASTION_API_KEY", "bst_from_env")
    assert parse_settings({"apiKey": "bst_inline"})[0].resolved_api_key() == "bst_inline"
    assert parse_settings({"apiKeyFile": str(key_file)})[0].resolved_api_key() == "bst_from_file"
    assert parse_settings({})[0].resolved_api_key() == "bst_from_env"


def test_the_key_never_shows_in_repr() -> None:
    settings, _ = parse_settings({"apiKey": "bst_secret_value"})
    assert "bst_secret_value" not in repr(settings)
    assert "bst_secret_value" not in str(settings.model_dump())
