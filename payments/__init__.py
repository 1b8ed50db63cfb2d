"""The payments API: money moves exactly once, and the books always balance."""
