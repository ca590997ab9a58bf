"""Unit tests of the stabcheck library."""
