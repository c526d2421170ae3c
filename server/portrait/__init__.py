"""Portrait: face verification for phone-number registration."""

__version__ = "0.1.0"
