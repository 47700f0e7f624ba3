"""CoCa processor placeholder (filled below)."""
