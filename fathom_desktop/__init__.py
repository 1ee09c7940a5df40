"""Fathom Desktop: a local, offline chat app for the Fathom-R1-14B reasoning model."""

__version__ = "0.1.0"
