"""Tests written to kill surviving mutants (make mutation); the BEFORE scores were taken with this file empty."""
