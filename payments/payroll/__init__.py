"""Payroll: bulk payments from one account, paid by the worker in batches."""
