-- Webhooks: events pushed to the user's own server, from a transactional outbox. An event and
-- its deliveries are inserted by the same transaction as the change they report, so a change
-- that rolls back emits nothing and one that commits is never lost. The workers send them later.

-- Where a user wants events sent, and which. The signing secret is kept sealed (encrypted by the
-- service with a key from its environment, WEBHOOK_SECRET_KEY): a copy of the database alone
-- cannot sign. A deleted endpoint stays, with its deliveries, for the delivery log.
CREATE TABLE webhook_endpoint (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        bigint      NOT NULL REFERENCES app_user (id),
    url            text        NOT NULL CHECK (length(url) <= 2048 AND url ~ '^https?://'),
    events         text[]      NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 4
                                           AND events <@ ARRAY['transaction.created',
                                               'payment.succeeded', 'payment.failed',
                                               'payroll_job.completed']),
    secret_sealed  text        NOT NULL CHECK (length(secret_sealed) <= 1000),
    -- Where it sends, for the workers' share per receiving host (user:password is refused).
    host           text        GENERATED ALWAYS AS (lower(substring(url FROM '^[a-z]+://([^/?#]*)')))
                               STORED,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz CHECK (deleted_at >= created_at)
);
-- What every emission probes: the live endpoints of a user. Empty, it answers in one index probe.
CREATE INDEX webhook_endpoint_live_idx ON webhook_endpoint (user_id) WHERE deleted_at IS NULL;
CREATE INDEX webhook_endpoint_user_idx ON webhook_endpoint (user_id, id);  -- the owner's list

-- One event, as it is sent: payload holds the exact bytes every delivery of it signs and sends,
-- so a retry or a redelivery is byte for byte the first one. Append-only.
CREATE TABLE webhook_event (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id   text        NOT NULL UNIQUE CHECK (public_id ~ '^evt_[0-9a-f]{32}$'),
    type        text        NOT NULL CHECK (type IN ('transaction.created', 'payment.succeeded',
                                                     'payment.failed', 'payroll_job.completed')),
    payload     text        NOT NULL CHECK (length(payload) <= 65536),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One event for one endpoint: the job of the workers. pending: due at next_attempt_at; a worker
-- that claims it moves next_attempt_at to the end of its lease (lease_owner), so a worker that
-- died leaves it due again when the lease runs out. delivered: a 2xx came back. failed: the
-- attempts ran out (or the endpoint was deleted). attempts counts claims.
CREATE TABLE webhook_delivery (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         bigint      NOT NULL REFERENCES webhook_event (id),
    endpoint_id      bigint      NOT NULL REFERENCES webhook_endpoint (id),
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         smallint    NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text        CHECK (length(lease_owner) <= 100),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
-- The queue: only what is still to send, soonest first. Also what /queue/stats counts.
CREATE INDEX webhook_delivery_due_idx ON webhook_delivery (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_delivery_failed_idx ON webhook_delivery (id) WHERE state = 'failed';
CREATE INDEX webhook_delivery_endpoint_idx ON webhook_delivery (endpoint_id) WHERE state = 'pending';
-- Claimed and never recorded (the lease owner stays): what runs out of attempts that way.
CREATE INDEX webhook_delivery_claimed_idx ON webhook_delivery (next_attempt_at)
    WHERE state = 'pending' AND lease_owner IS NOT NULL;

-- Each attempt to send a delivery, for the owner's delivery log: what came back, how long it
-- took, and at most 200 characters of the receiver's answer (never more of what it sent).
CREATE TABLE webhook_attempt (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id       bigint      NOT NULL REFERENCES webhook_delivery (id),
    endpoint_id       bigint      NOT NULL REFERENCES webhook_endpoint (id),
    attempt           smallint    NOT NULL CHECK (attempt >= 1),
    outcome           text        NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed')),
    status_code       smallint    CHECK (status_code BETWEEN 100 AND 599),
    duration_ms       integer     NOT NULL CHECK (duration_ms >= 0),
    error             text        CHECK (length(error) <= 200),
    response_excerpt  text        CHECK (length(response_excerpt) <= 200),
    next_attempt_at   timestamptz,
    attempted_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempt_endpoint_idx ON webhook_attempt (endpoint_id, id);  -- the log, newest first

-- Emit an event of p_type about p_object to the endpoints of p_user_ids that want it: the one
-- function every change calls, in its own transaction. When none of them has such an endpoint
-- (the common case) it costs one probe of an index and writes nothing.
CREATE FUNCTION emit_event_v1(p_type text, p_user_ids bigint[], p_object json) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_public_id text;
    v_event_id bigint;
BEGIN
    PERFORM 1 FROM webhook_endpoint e
     WHERE e.user_id = ANY(p_user_ids) AND e.deleted_at IS NULL AND p_type = ANY(e.events)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_public_id := 'evt_' || replace(gen_random_uuid()::text, '-', '');
    INSERT INTO webhook_event (public_id, type, payload)
    VALUES (v_public_id, p_type,
            (SELECT row_to_json(r)::text
               FROM (SELECT v_public_id AS id, p_type AS type, utc_text(now()) AS created_at,
                            (SELECT row_to_json(o) FROM (SELECT p_object AS object) o) AS data) r))
    RETURNING id INTO v_event_id;
    INSERT INTO webhook_delivery (event_id, endpoint_id)
    SELECT v_event_id, e.id FROM webhook_endpoint e
     WHERE e.user_id = ANY(p_user_ids) AND e.deleted_at IS NULL AND p_type = ANY(e.events);
    -- Wake the workers, unless deliveries already wait: then they are busy, and a busy worker
    -- claims again until nothing is due. NOTIFY serialises the commits of the transactions that
    -- send it, so under load it is sent rarely; the workers' poll covers the rest.
    IF NOT EXISTS (SELECT 1 FROM webhook_delivery d
                    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
                      AND d.event_id <> v_event_id) THEN
        PERFORM pg_notify('webhook_due', '');
    END IF;
END $$;

-- A worker's claim: up to p_limit deliveries due, soonest first, each now the worker's until
-- now + p_lease_s (its next_attempt_at), its attempt counted; none for endpoints on the hosts
-- in p_busy (the worker has as many in flight to each as it allows one host, so a slow
-- receiver's backlog cannot take every place). A claim reads at most p_limit * 8 rows of the
-- head of the queue: behind a longer run of busy hosts' deliveries, the others wait their turn.
-- SKIP LOCKED: workers claiming at once never take the same delivery, nor wait on each other.
-- One claimed p_attempts_max times whose worker never said how it went (it died each time)
-- fails instead of being claimed again.
CREATE FUNCTION claim_webhook_deliveries_v1(p_worker text, p_limit int, p_lease_s int,
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
         ORDER BY q.next_attempt_at LIMIT p_limit * 8 FOR UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT c.id FROM candidate c JOIN webhook_endpoint b ON b.id = c.endpoint_id
         WHERE b.host <> ALL(p_busy)
         ORDER BY c.next_attempt_at LIMIT p_limit
    )
    UPDATE webhook_delivery d
       SET lease_owner = p_worker, attempts = d.attempts + 1, updated_at = now(),
           next_attempt_at = now() + make_interval(secs => p_lease_s)
      FROM chosen ch, webhook_endpoint e, webhook_event v
     WHERE d.id = ch.id AND e.id = d.endpoint_id AND v.id = d.event_id
    RETURNING d.id, e.host, d.attempts::int, e.url, e.secret_sealed, v.public_id, v.payload,
              extract(epoch FROM d.created_at)::float8;
END $$;

-- What one attempt came to, in a short transaction of its own after the HTTP call. Always
-- logged; the delivery moves on only while it is still this worker's claim (its lease not taken
-- over, no redelivery since): delivered, due again after p_retry_s, or failed when this was the
-- last attempt. Returns the outcome.
CREATE FUNCTION record_webhook_attempt_v1(
    p_id bigint, p_worker text, p_attempt int, p_delivered boolean, p_status_code int,
    p_duration_ms int, p_error text, p_excerpt text, p_retry_s double precision,
    p_attempts_max int)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome text;
    v_next timestamptz;
    v_endpoint_id bigint;
BEGIN
    v_outcome := CASE WHEN p_delivered THEN 'delivered'
                      WHEN p_attempt >= p_attempts_max THEN 'failed' ELSE 'retrying' END;
    v_next := CASE v_outcome WHEN 'retrying' THEN now() + make_interval(secs => p_retry_s) END;
    UPDATE webhook_delivery d
       SET state = CASE v_outcome WHEN 'retrying' THEN 'pending' ELSE v_outcome END,
           next_attempt_at = coalesce(v_next, d.next_attempt_at), lease_owner = NULL,
           updated_at = now()
     WHERE d.id = p_id AND d.state = 'pending' AND d.lease_owner = p_worker
       AND d.attempts = p_attempt;
    SELECT d.endpoint_id INTO v_endpoint_id FROM webhook_delivery d WHERE d.id = p_id;
    INSERT INTO webhook_attempt (delivery_id, endpoint_id, attempt, outcome, status_code,
                                 duration_ms, error, response_excerpt, next_attempt_at)
    VALUES (p_id, v_endpoint_id, p_attempt, v_outcome, p_status_code, p_duration_ms,
            left(p_error, 200), left(p_excerpt, 200), v_next);
    RETURN v_outcome;
END $$;

-- The attempts a worker finished lately, recorded in one transaction (one commit for many), in id
-- order. Returns each delivery's outcome.
CREATE FUNCTION record_webhook_attempts_v1(
    p_ids bigint[], p_workers text[], p_attempts int[], p_delivered boolean[],
    p_status_codes int[], p_durations_ms int[], p_errors text[], p_excerpts text[],
    p_retries_s double precision[], p_attempts_max int)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE sql AS $$
    SELECT r.id, record_webhook_attempt_v1(r.id, r.worker, r.attempt, r.delivered, r.status_code,
                                           r.duration_ms, r.error, r.excerpt, r.retry_s,
                                           p_attempts_max)
      FROM unnest(p_ids, p_workers, p_attempts, p_delivered, p_status_codes, p_durations_ms,
                  p_errors, p_excerpts, p_retries_s)
           AS r(id, worker, attempt, delivered, status_code, duration_ms, error, excerpt, retry_s)
     ORDER BY r.id
$$;

-- A worker that stops gives back what it claimed and did not send, so nobody waits for a lease;
-- a claim given back was no attempt.
CREATE FUNCTION release_webhook_deliveries_v1(p_worker text, p_ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE webhook_delivery d
       SET lease_owner = NULL, next_attempt_at = now(), attempts = d.attempts - 1,
           updated_at = now()
     WHERE d.id = ANY(p_ids) AND d.state = 'pending' AND d.lease_owner = p_worker
$$;

-- POST /webhooks/endpoints: a new endpoint, unless the user already has p_live_max (then no
-- row). The user's row is locked first, so that two creates for one user take turns and count
-- each other's endpoints. Audited in the same transaction.
CREATE FUNCTION create_webhook_endpoint_v1(
    p_user_id bigint, p_url text, p_events text[], p_secret_sealed text, p_live_max int,
    p_ip text, p_request_id text, OUT id bigint, OUT created_at text)
LANGUAGE plpgsql AS $$
DECLARE
    v_created timestamptz;
BEGIN
    PERFORM 1 FROM app_user u WHERE u.id = p_user_id FOR NO KEY UPDATE;
    IF (SELECT count(*) FROM webhook_endpoint e
         WHERE e.user_id = p_user_id AND e.deleted_at IS NULL) >= p_live_max THEN
        RETURN;
    END IF;
    INSERT INTO webhook_endpoint (user_id, url, events, secret_sealed)
    VALUES (p_user_id, p_url, p_events, p_secret_sealed)
    RETURNING webhook_endpoint.id, webhook_endpoint.created_at INTO id, v_created;
    created_at := utc_text(v_created);
    INSERT INTO audit_log (actor_id, action, target, ip, request_id, details)
    VALUES (p_user_id, 'webhook_endpoint.created', id::text, p_ip, p_request_id,
            -- the URL without credentials or a query, either of which may carry a secret
            jsonb_build_object('url', regexp_replace(split_part(split_part(p_url, '#', 1), '?', 1),
                                                     '^([A-Za-z]+://)[^/@]*@', '\1'),
                               'events', p_events));
END $$;

-- POST /webhooks/events/{id}/redeliver: every delivery of the event to the caller's live
-- endpoints is due again now, with its attempts anew; the workers are woken. Returns the
-- endpoints, none when the event is not the caller's.
CREATE FUNCTION redeliver_webhook_event_v1(p_public_id text, p_user_id bigint)
RETURNS TABLE (endpoint_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE webhook_delivery d
       SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_owner = NULL,
           updated_at = now()
      FROM webhook_event v, webhook_endpoint e
     WHERE v.public_id = p_public_id AND d.event_id = v.id AND e.id = d.endpoint_id
       AND e.user_id = p_user_id AND e.deleted_at IS NULL
    RETURNING d.endpoint_id;
    IF FOUND THEN
        PERFORM pg_notify('webhook_due', '');
    END IF;
END $$;

-- The functions that change money on the API's paths, as in 0003 and 0004, now each emitting
-- its event in its own transaction.

-- POST /transactions: the request resolved, then move_money_v1 checks the rest (same account,
-- currencies, funds) under the accounts' locks.
CREATE OR REPLACE FUNCTION transfer_funds_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_from_number text, p_to_number text, p_amount text, p_currency text,
    p_description text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_request record;
    v_moved record;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    SELECT * INTO v_request
      FROM resolve_money_request_v1(p_user_id, p_from_number, p_to_number, p_amount, p_currency);
    IF v_request.invalid_amount THEN
        DELETE FROM idempotency_key k WHERE k.id = v_claim.key_id;  -- refused, not run
        stored := false;
        status := 422;
        body := validation_problem_v1('amount', v_request.detail);
    ELSIF v_request.problem IS NOT NULL THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem(v_request.problem, v_request.detail) b;
        PERFORM finish_idempotency_key(v_claim.key_id, status, body);
    ELSE
        SELECT * INTO v_moved FROM move_money_v1(v_request.source_id, v_request.target_id,
                                                  v_request.amount_minor, v_request.currency,
                                                  'transfer', p_description, NULL, v_claim.key_id);
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM answer_money_v1(v_claim.key_id, v_moved.transfer_id, v_moved.problem, v_moved.detail) a;
        IF v_moved.transfer_id IS NOT NULL THEN  -- to both parties, in this transaction
            PERFORM emit_event_v1('transaction.created', parties, body::json);
        END IF;
    END IF;
END $$;

-- POST /transactions/{id}/reverse: the recipient (or an admin) sends the amount back. The sender
-- may not (403); anyone who is not a party is told it does not exist (404), also for a
-- transaction one side of which is a funding account, owned by nobody. A transfer is reversed
-- once: the original is locked first, so a second, concurrent reversal waits, and only then is
-- "already reversed" read, by a statement of its own that sees what the first committed.
CREATE OR REPLACE FUNCTION reverse_transfer_v1(
    p_user_id bigint, p_is_admin boolean, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_transfer_id bigint,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_original record;
    v_is_party boolean;
    v_moved record;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    SELECT t.id, t.kind, t.amount_minor, t.currency, t.source_account_id, t.target_account_id,
           s.user_id AS source_user_id, d.user_id AS target_user_id
      INTO v_original
      FROM transfer t
      JOIN account s ON s.id = t.source_account_id
      JOIN account d ON d.id = t.target_account_id
     WHERE t.id = p_transfer_id
       FOR NO KEY UPDATE OF t;
    v_is_party := coalesce(p_user_id = v_original.source_user_id, false)
               OR coalesce(p_user_id = v_original.target_user_id, false);
    IF v_original.id IS NULL OR NOT (p_is_admin OR v_is_party) THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('not_found', 'no such transaction') b;
    ELSIF NOT p_is_admin AND p_user_id IS DISTINCT FROM v_original.target_user_id THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('forbidden', 'only the recipient may reverse a transfer') b;
    ELSIF v_original.kind NOT IN ('transfer', 'payment') THEN  -- a settled payment too
        SELECT b.status, b.body INTO status, body
          FROM business_problem('not_reversible', format('a %s cannot be reversed', v_original.kind)) b;
    ELSIF EXISTS (SELECT 1 FROM transfer r WHERE r.reverses_id = v_original.id) THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('already_reversed', 'this transfer was reversed already') b;
    ELSE
        SELECT * INTO v_moved FROM move_money_v1(
            v_original.target_account_id, v_original.source_account_id, v_original.amount_minor,
            v_original.currency, 'reversal', format('Reversal of transaction %s', v_original.id),
            v_original.id, v_claim.key_id);
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM answer_money_v1(v_claim.key_id, v_moved.transfer_id, v_moved.problem, v_moved.detail) a;
        IF v_moved.transfer_id IS NOT NULL THEN  -- to both parties, in this transaction
            PERFORM emit_event_v1('transaction.created', parties, body::json);
        END IF;
        RETURN;
    END IF;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- Settle the payments p_worker claimed, in one transaction: for each one still its own (the lease
-- not taken over), the money, the transfer, its ledger entries and the final state commit
-- together, or nothing does. A payment that cannot be afforded FAILS with the reason
-- move_money_v1 gives; the others go on.
-- The batch never waits for an account: each payment's two accounts are taken with SKIP LOCKED,
-- and a payment whose account another transaction holds is given back (PENDING, the claim not
-- counted as an attempt) to be settled a moment later. So batches settling at once on other
-- workers, or transfers through the API, neither deadlock with it nor queue behind it.
-- Returns each payment's outcome (succeeded, failed, deferred), its latency from acceptance,
-- and whose books changed, for the metrics and the response cache.
CREATE OR REPLACE FUNCTION settle_payments_v1(p_worker text, p_ids bigint[])
RETURNS TABLE (payment_id bigint, outcome text, latency_s double precision,
               parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_payment record;
    v_locked int;
    v_moved record;
BEGIN
    FOR v_payment IN
        SELECT p.id, p.source_account_id, p.target_account_id, p.amount_minor, p.currency,
               p.description, p.created_at, s.user_id AS source_user_id,
               d.user_id AS target_user_id
          FROM payment p
          JOIN account s ON s.id = p.source_account_id
          JOIN account d ON d.id = p.target_account_id
         WHERE p.id = ANY(p_ids) AND p.status = 'PROCESSING' AND p.lease_owner = p_worker
         ORDER BY p.id
           FOR NO KEY UPDATE OF p
    LOOP
        payment_id := v_payment.id;
        SELECT count(*) INTO v_locked
          FROM (SELECT 1 FROM account a
                 WHERE a.id IN (v_payment.source_account_id, v_payment.target_account_id)
                 ORDER BY a.id FOR NO KEY UPDATE SKIP LOCKED) l;
        IF v_locked < 2 THEN
            UPDATE payment p
               SET status = 'PENDING', lease_owner = NULL, lease_until = NULL,
                   attempts = p.attempts - 1, updated_at = now()
             WHERE p.id = v_payment.id;
            outcome := 'deferred';
            latency_s := NULL;
            parties := ARRAY[]::bigint[];
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT * INTO v_moved FROM move_money_v1(
            v_payment.source_account_id, v_payment.target_account_id, v_payment.amount_minor,
            v_payment.currency, 'payment', v_payment.description, NULL, NULL);
        UPDATE payment p
           SET status = CASE WHEN v_moved.problem IS NULL THEN 'SUCCEEDED' ELSE 'FAILED' END,
               failure_reason = v_moved.problem, transfer_id = v_moved.transfer_id,
               lease_owner = NULL, lease_until = NULL, settled_at = now(), updated_at = now()
         WHERE p.id = v_payment.id;
        PERFORM emit_event_v1(  -- to the payer and the payee, in the settlement's transaction
            CASE WHEN v_moved.problem IS NULL THEN 'payment.succeeded' ELSE 'payment.failed' END,
            ARRAY[v_payment.source_user_id, v_payment.target_user_id],
            (SELECT o.body FROM payment_out o WHERE o.id = v_payment.id));
        outcome := CASE WHEN v_moved.problem IS NULL THEN 'succeeded' ELSE 'failed' END;
        latency_s := extract(epoch FROM clock_timestamp() - v_payment.created_at);
        parties := CASE WHEN v_moved.problem IS NULL  -- whose books, and cached reads, changed
                        THEN ARRAY[v_payment.source_user_id, v_payment.target_user_id]
                        ELSE ARRAY[]::bigint[] END;
        RETURN NEXT;
    END LOOP;
END $$;
