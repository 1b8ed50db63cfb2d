"""Routes for operators and readers of the contract: health, readiness and the docs."""
