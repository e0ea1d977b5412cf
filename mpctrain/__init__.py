"""mpctrain: multi-party confidential training on attested TEEs."""

__version__ = "0.1.0"
