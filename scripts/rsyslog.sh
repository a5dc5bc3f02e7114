#!/usr/bin/env bash
# rsyslog with its OpenSSL network driver and its RELP input: a real collector of syslog over TLS
# (RFC 5425) and over RELP for the SIEM export's tests. Installs Debian's packages when they are
# missing; prints rsyslogd's path.
#
#   scripts/rsyslog.sh
#
# The tests run their own rsyslogd in the foreground, with a config of their own; installing the
# package starts no daemon here (there is no init system to start one).
set -euo pipefail

die() { echo "rsyslog.sh: $*" >&2; exit 1; }

PACKAGES=(rsyslog rsyslog-openssl rsyslog-relp)

modules_present() {
    compgen -G "/usr/lib/*/rsyslog/lmnsd_ossl.so" >/dev/null \
        && compgen -G "/usr/lib/*/rsyslog/imrelp.so" >/dev/null
}

if ! command -v rsyslogd >/dev/null || ! modules_present; then
    [[ $EUID -eq 0 ]] || die "rsyslog is not installed; run this once as root, or: apt-get install -y ${PACKAGES[*]}"
    echo "rsyslog.sh: installing rsyslog (apt-get install -y ${PACKAGES[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${PACKAGES[@]}" >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends "${PACKAGES[@]}" >&2; } \
        || die "apt-get could not install ${PACKAGES[*]}"
fi
modules_present || die "rsyslog installed, but its OpenSSL driver or RELP input is not there"
command -v rsyslogd
