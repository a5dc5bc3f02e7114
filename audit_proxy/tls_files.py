"""The PEM files that TLS settings name, checked where they are loaded: an error names the
setting and the file, and says what to do."""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path

log = logging.getLogger("bastion.proxy")


class TlsFileError(ValueError):
    """A TLS file cannot be used; the message names its setting and the file."""


def require_both_or_neither(
    cert_setting: str, cert: Path | None, key_setting: str, key: Path | None, without: str
) -> None:
    """A certificate chain goes with its key; `without` says what having neither means."""
    if (cert is None) == (key is None):
        return
    given, missing = cert_setting, key_setting
    if cert is None:
        given, missing = missing, given
    raise TlsFileError(
        f"{given} is set but {missing} is not; TLS needs both the certificate chain and its "
        f"private key (PEM files), or neither {without}"
    )


def load_certificate(
    context: ssl.SSLContext, cert_setting: str, cert: Path, key_setting: str, key: Path
) -> None:
    """The chain and its key into `context`; a key that other accounts can read is logged."""
    readable(cert_setting, cert)
    readable(key_setting, key)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise TlsFileError(
            f"{cert_setting} {cert} / {key_setting} {key}: not a usable PEM certificate chain "
            f"and matching unencrypted key ({exc.reason or exc}); check that the key belongs "
            "to the certificate"
        ) from None
    mode = key.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s %s is readable by other accounts (mode %o); chmod 600 it",
            key_setting,
            key,
            stat.S_IMODE(mode),
        )


def load_ca_bundle(context: ssl.SSLContext, setting: str, bundle: Path) -> None:
    """The CA certificates of `bundle` into `context`, beside those it trusts already."""
    readable(setting, bundle)
    try:
        context.load_verify_locations(cafile=str(bundle))
    except ssl.SSLError as exc:
        raise TlsFileError(
            f"{setting} {bundle}: not a PEM bundle of CA certificates ({exc.reason or exc})"
        ) from None


def readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsFileError(
            f"{setting}: cannot read {path} ({exc.strerror}); point it at a readable PEM file"
        ) from None
