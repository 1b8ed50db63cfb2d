-- name: create_webhook_endpoint
SELECT id, created_at
  FROM create_webhook_endpoint_v1($1, $2, $3::text[], $4, $5, $6, $7);

-- name: webhook_endpoints_of_user
-- Live endpoints, newest first, keyset on id. Never the secret.
SELECT e.id,
       (SELECT row_to_json(r)::text
          FROM (SELECT e.id, e.url, e.events, utc_text(e.created_at) AS created_at) r) AS body
  FROM webhook_endpoint e
 WHERE e.user_id = $1 AND e.deleted_at IS NULL AND e.id < $2
 ORDER BY e.id DESC
 LIMIT $3;

-- name: delete_webhook_endpoint
-- The caller's live endpoint, deleted: what it still had to send fails, and it is audited. No row
-- for an endpoint that is not the caller's or is gone already.
WITH target AS (
    UPDATE webhook_endpoint e SET deleted_at = now()
     WHERE e.id = $1 AND e.user_id = $2 AND e.deleted_at IS NULL
    RETURNING e.id
), dropped AS (
    UPDATE webhook_delivery d SET state = 'failed', lease_owner = NULL, updated_at = now()
      FROM target t
     WHERE d.endpoint_id = t.id AND d.state = 'pending'
), audited AS (
    INSERT INTO audit_log (actor_id, action, target, ip, request_id)
    SELECT $2, 'webhook_endpoint.deleted', t.id::text, $3, $4 FROM target t
)
SELECT t.id FROM target t;

-- name: webhook_endpoint_is_owned
SELECT EXISTS (SELECT 1 FROM webhook_endpoint e
                WHERE e.id = $1 AND e.user_id = $2 AND e.deleted_at IS NULL);

-- name: webhook_attempts_of_endpoint
-- The delivery log of one endpoint: each attempt, newest first, keyset on id.
SELECT a.id,
       (SELECT row_to_json(r)::text
          FROM (SELECT a.id, v.public_id AS event_id, v.type AS event_type, a.attempt,
                       a.outcome, a.status_code, a.duration_ms, a.error, a.response_excerpt,
                       utc_text(a.next_attempt_at) AS next_attempt_at,
                       utc_text(a.attempted_at) AS attempted_at) r) AS body
  FROM webhook_attempt a
  JOIN webhook_delivery d ON d.id = a.delivery_id
  JOIN webhook_event v ON v.id = d.event_id
 WHERE a.endpoint_id = $1 AND a.id < $2
 ORDER BY a.id DESC
 LIMIT $3;

-- name: redeliver_webhook_event
SELECT endpoint_id FROM redeliver_webhook_event_v1($1, $2) ORDER BY endpoint_id;

-- name: claim_webhook_deliveries
SELECT id, host, attempt, url, secret_sealed, event_id, payload, created_at
  FROM claim_webhook_deliveries_v1($1, $2, $3, $4, $5::text[]);

-- name: record_webhook_attempts
SELECT id, outcome
  FROM record_webhook_attempts_v1($1::bigint[], $2::text[], $3::int[], $4::boolean[], $5::int[],
                                  $6::int[], $7::text[], $8::text[], $9::float8[], $10);

-- name: release_webhook_deliveries
SELECT release_webhook_deliveries_v1($1, $2);

-- name: webhook_queue_stats
-- For /queue/stats and the gauges: each count reads a partial index of its own state alone.
SELECT (SELECT count(*) FROM webhook_delivery d WHERE d.state = 'pending') AS pending,
       (SELECT count(*) FROM webhook_delivery d WHERE d.state = 'failed') AS failed;
