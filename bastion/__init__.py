"""bastion."""
