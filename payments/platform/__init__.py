"""The platform under the domains: settings, the database and Redis, logs, metrics, migrations
and the embedded servers."""
