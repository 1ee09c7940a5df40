"""Training fathom-tiny, the embedded demo model (needs the [train] extra: torch)."""
