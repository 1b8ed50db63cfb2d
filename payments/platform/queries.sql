-- Housekeeping and health checks, loaded into payments.platform.db.Q.

-- name: ping
SELECT 1;

-- name: delete_expired_idempotency_keys
-- A batch of keys past their retention; transfers keep their history without them.
DELETE FROM idempotency_key
 WHERE id IN (SELECT k.id FROM idempotency_key k WHERE k.expires_at <= now()
               ORDER BY k.expires_at LIMIT $1);

-- name: cursor_key
SELECT secret FROM service_key WHERE name = 'cursor';
