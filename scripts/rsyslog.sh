#!/usr/bin/env bash
# rsyslog with its OpenSSL network driver: a real syslog-over-TLS collector (RFC 5425) for the
# SIEM export's tests. Installs Debian's packages when they are missing; prints rsyslogd's path.
#
#   scripts/rsyslog.sh
#
# The tests run their own rsyslogd in the foreground, with a config of their own; installing the
# package starts no daemon here (there is no init system to start one).
set -euo pipefail

die() { echo "rsyslog.sh: $*" >&2; exit 1; }

driver_present() {
    compgen -G "/usr/lib/*/rsyslog/lmnsd_ossl.so" >/dev/null
}

if ! command -v rsyslogd >/dev/null || ! driver_present; then
    [[ $EUID -eq 0 ]] || die "rsyslog is not installed; run this once as root, or: apt-get install -y rsyslog rsyslog-openssl"
    echo "rsyslog.sh: installing rsyslog (apt-get install -y rsyslog rsyslog-openssl)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends rsyslog rsyslog-openssl >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends rsyslog rsyslog-openssl >&2; } \
        || die "apt-get could not install rsyslog and rsyslog-openssl"
fi
driver_present || die "rsyslog installed, but its OpenSSL driver (lmnsd_ossl.so) is not there"
command -v rsyslogd
