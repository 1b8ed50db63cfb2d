-- Admin and the audit log: the queries of payments/admin, loaded into payments.platform.db.Q.

-- name: insert_audit_events
-- The buffered writer's batch, in one statement, in the order the events were recorded; the
-- chain's trigger (sql/0007) gives each row its id, prev_hash and hash under the head's lock.
INSERT INTO audit_log (at, actor_id, action, target, ip, request_id, details)
SELECT e.at, e.actor_id, e.action, e.target, e.ip, e.request_id, e.details::jsonb
  FROM unnest($1::timestamptz[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[]) WITH ORDINALITY AS e (at, actor_id, action, target, ip, request_id,
                                                details, n)
 ORDER BY e.n;

-- name: audit_event
-- One event written in the caller's transaction, with the change it describes.
SELECT audit_v1($1, $2, $3, $4, $5, $6::jsonb);

-- name: audit_events
-- Newest first, keyset on id, optionally of one action ($1) and one actor ($2). `at` keeps its
-- microseconds, as the hash does, so that a row read here can be hashed again by hand; details
-- is its text as PostgreSQL prints it, the text that was hashed.
SELECT l.id, to_char(l.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at,
       l.actor_id, l.action, l.target, l.ip, l.request_id, l.details::text AS details,
       encode(l.hash, 'hex') AS hash, encode(l.prev_hash, 'hex') AS prev_hash
  FROM audit_log l
 WHERE ($1::text IS NULL OR l.action = $1)
   AND ($2::bigint IS NULL OR l.actor_id = $2)
   AND l.id < $3
 ORDER BY l.id DESC
 LIMIT $4;

-- name: audit_chain_check
SELECT valid, entries, tampered_at FROM audit_chain_check_v1();

-- name: admin_account
-- Any customer or funding account, with its kind and its owner (none for a funding account).
SELECT (SELECT row_to_json(r)::text
          FROM (SELECT a.id, a.account_number, a.currency,
                       money_text(a.balance_minor, c.exponent) AS balance,
                       utc_text(a.created_at) AS created_at, a.kind, a.user_id,
                       u.email AS owner_email) r)
  FROM account a
  JOIN currency c ON c.code = a.currency
  LEFT JOIN app_user u ON u.id = a.user_id
 WHERE a.account_number = $1;

-- name: admin_transfer
SELECT t.body::text FROM transfer_out t WHERE t.id = $1;

-- name: payments_queue_stats
-- Payments not yet final, read through the partial index payment_due_idx (sql/0004), which holds
-- only PENDING and PROCESSING payments: the cost follows the queue's depth, not the table's size.
SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending,
       count(*) FILTER (WHERE status = 'PROCESSING') AS processing,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'PENDING')), 0)
           ::double precision AS oldest_pending_age_s
  FROM payment WHERE status IN ('PENDING', 'PROCESSING');
