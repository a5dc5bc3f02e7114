"""audit_proxy."""
