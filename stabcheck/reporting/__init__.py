"""Reporting: claim reports (claims.json / claims.md), figures and the command line."""
