"""Development and test infrastructure: real servers started on loopback ports."""
