-- Payments: the queries of payments/payments, loaded into payments.platform.db.Q.

-- name: create_payment
SELECT status, body, replayed, stored, parties
  FROM create_payment_v1($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: payment_of_user
SELECT p.body::text FROM payment_out p
 WHERE p.id = $1 AND (p.source_user_id = $2 OR p.target_user_id = $2);

-- name: payments_of_user
-- Newest first, keyset on id, payer's and payee's, optionally of one status.
SELECT p.id, p.body::text
  FROM payment_out p
 WHERE p.id IN ((SELECT x.id FROM payment x JOIN account a ON a.id = x.source_account_id
                  WHERE a.user_id = $1 AND x.id < $2 AND ($3::text IS NULL OR x.status = $3)
                  ORDER BY x.id DESC LIMIT $4)
                 UNION ALL
                (SELECT x.id FROM payment x JOIN account a ON a.id = x.target_account_id
                  WHERE a.user_id = $1 AND x.id < $2 AND ($3::text IS NULL OR x.status = $3)
                  ORDER BY x.id DESC LIMIT $4))
 ORDER BY p.id DESC
 LIMIT $4;

-- name: claim_payments
SELECT id, claimed FROM claim_payments_v1($1, $2, $3, $4);

-- name: settle_payments
SELECT payment_id, outcome, latency_s, parties FROM settle_payments_v1($1, $2);

-- name: release_payments
SELECT release_payments_v1($1, $2);

-- name: payment_queue
-- Queue depth by state, how long the oldest pending payment has waited (the partial index holds
-- only payments not yet final), and the workers whose heartbeat is fresh (three beats missed:
-- gone; payments.worker.HEARTBEAT_INTERVAL_S is 5 s).
SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending,
       count(*) FILTER (WHERE status = 'PROCESSING') AS processing,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'PENDING')), 0)
           ::double precision AS oldest_pending_age_s,
       (SELECT count(*) FROM worker_heartbeat WHERE seen_at > now() - interval '15 seconds')
           AS workers_alive
  FROM payment WHERE status IN ('PENDING', 'PROCESSING');

-- name: worker_heartbeat
-- This worker is alive; the rows of workers gone for an hour (killed, never removed) are dropped.
WITH gone AS (DELETE FROM worker_heartbeat WHERE seen_at < now() - interval '1 hour')
INSERT INTO worker_heartbeat (worker, seen_at) VALUES ($1, now())
    ON CONFLICT (worker) DO UPDATE SET seen_at = excluded.seen_at;

-- name: worker_stopped
DELETE FROM worker_heartbeat WHERE worker = $1;
