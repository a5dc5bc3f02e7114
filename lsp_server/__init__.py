"""The LSP surface of Bastion: document state, settings, cancellation, progress."""

__version__ = "0.1.0"
