"""The HTTP layers: request context, problems, authentication, admission (the request's one Redis
round trip), rate limits, idempotency and the response cache, one concern a file."""
