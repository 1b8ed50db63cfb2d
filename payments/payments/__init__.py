"""Payments: accepted now (202), settled later by a worker, exactly once."""
