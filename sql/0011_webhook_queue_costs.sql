-- What a webhook delivery costs PostgreSQL, cut where it was spent.

-- A worker records its finished attempts as one set: one UPDATE of the deliveries and one INSERT
-- of the attempts for the whole batch. 0009 ran a PL/pgSQL function per attempt, three
-- statements each, whose generic plan for the UPDATE could walk the index of claimed deliveries;
-- measured on 6,000 deliveries in batches of 64, PostgreSQL spent 1,143 µs per delivery that
-- way, and 83 µs as a set. Same arguments, same results, same rule: a delivery moves on only
-- while it is still this worker's claim (its lease not taken over, no redelivery since), and
-- its attempt is logged either way.
CREATE OR REPLACE FUNCTION record_webhook_attempts_v1(
    p_ids bigint[], p_workers text[], p_attempts int[], p_delivered boolean[],
    p_status_codes int[], p_durations_ms int[], p_errors text[], p_excerpts text[],
    p_retries_s double precision[], p_attempts_max int)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE sql AS $$
    WITH attempt AS (
        SELECT r.*, CASE WHEN r.delivered THEN 'delivered'
                         WHEN r.attempt >= p_attempts_max THEN 'failed'
                         ELSE 'retrying' END AS outcome
          FROM unnest(p_ids, p_workers, p_attempts, p_delivered, p_status_codes, p_durations_ms,
                      p_errors, p_excerpts, p_retries_s)
               AS r(id, worker, attempt, delivered, status_code, duration_ms, error, excerpt,
                    retry_s)
    ), judged AS (
        SELECT a.*, CASE a.outcome WHEN 'retrying'
                    THEN now() + make_interval(secs => a.retry_s) END AS next_at
          FROM attempt a
    ), moved AS (
        UPDATE webhook_delivery d
           SET state = CASE j.outcome WHEN 'retrying' THEN 'pending' ELSE j.outcome END,
               next_attempt_at = coalesce(j.next_at, d.next_attempt_at), lease_owner = NULL,
               updated_at = now()
          FROM judged j
         WHERE d.id = j.id AND d.state = 'pending' AND d.lease_owner = j.worker
           AND d.attempts = j.attempt
    ), logged AS (
        INSERT INTO webhook_attempt (delivery_id, endpoint_id, attempt, outcome, status_code,
                                     duration_ms, error, response_excerpt, next_attempt_at)
        SELECT j.id, d.endpoint_id, j.attempt, j.outcome, j.status_code, j.duration_ms,
               left(j.error, 200), left(j.excerpt, 200), j.next_at
          FROM judged j JOIN webhook_delivery d ON d.id = j.id
         ORDER BY j.id
    )
    SELECT j.id, j.outcome FROM judged j ORDER BY j.id
$$;

DROP FUNCTION record_webhook_attempt_v1(bigint, text, int, boolean, int, int, text, text,
                                        double precision, int);

-- A claim locks only what it claims. 0009 locked the whole head of the queue it reads
-- (p_limit * 8 rows) and claimed at most p_limit of them: while a slow host had its share in
-- flight, every claim locked up to 128 of its deliveries only to take none. The head is now read
-- without locks, and the rows chosen from it are locked (SKIP LOCKED, rechecked as they are
-- locked, so a row another worker claimed meanwhile is passed over).
CREATE OR REPLACE FUNCTION claim_webhook_deliveries_v1(p_worker text, p_limit int, p_lease_s int,
                                                       p_attempts_max int, p_busy text[])
RETURNS TABLE (id bigint, host text, attempt int, url text, secret_sealed text,
               event_id text, payload text, created_at double precision)
LANGUAGE plpgsql AS $$
BEGIN
    -- Only a claim never recorded keeps its lease owner: a short index finds those.
    UPDATE webhook_delivery d SET state = 'failed', lease_owner = NULL, updated_at = now()
     WHERE d.id IN (SELECT q.id FROM webhook_delivery q
                     WHERE q.state = 'pending' AND q.lease_owner IS NOT NULL
                       AND q.next_attempt_at <= now() AND q.attempts >= p_attempts_max
                     ORDER BY q.next_attempt_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    WITH candidate AS (  -- the head of the queue: a claim reads this much, however long it is
        SELECT q.id, q.endpoint_id, q.next_attempt_at FROM webhook_delivery q
         WHERE q.state = 'pending' AND q.next_attempt_at <= now()
           AND q.attempts < p_attempts_max
         ORDER BY q.next_attempt_at LIMIT p_limit * 8
    ), chosen AS (
        SELECT q.id FROM candidate c
          JOIN webhook_endpoint b ON b.id = c.endpoint_id
          JOIN webhook_delivery q ON q.id = c.id
         WHERE b.host <> ALL(p_busy)
           AND q.state = 'pending' AND q.next_attempt_at <= now()
           AND q.attempts < p_attempts_max
         ORDER BY c.next_attempt_at LIMIT p_limit
           FOR UPDATE OF q SKIP LOCKED
    )
    UPDATE webhook_delivery d
       SET lease_owner = p_worker, attempts = d.attempts + 1, updated_at = now(),
           next_attempt_at = now() + make_interval(secs => p_lease_s)
      FROM chosen ch, webhook_endpoint e, webhook_event v
     WHERE d.id = ch.id AND e.id = d.endpoint_id AND v.id = d.event_id
    RETURNING d.id, e.host, d.attempts::int, e.url, e.secret_sealed, v.public_id, v.payload,
              extract(epoch FROM d.created_at)::float8;
END $$;
