-- Payments: accepted now, settled later by a worker. The payment row is the job: it is written in
-- the same statement as the key's answer, so an accepted payment is never lost, and it is settled
-- in the same transaction as the money it moves, so it is never settled twice.

-- One payment, from its acceptance to its final state. PENDING: waiting for a worker. PROCESSING:
-- claimed by one worker (lease_owner) until lease_until; a worker that died is replaced once the
-- lease has run out. SUCCEEDED carries the transfer that moved the money; FAILED the reason.
CREATE TABLE payment (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             bigint      NOT NULL REFERENCES app_user (id),
    source_account_id   bigint      NOT NULL,
    target_account_id   bigint      NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            text        NOT NULL REFERENCES currency (code),
    description         text        CHECK (length(description) <= 500),
    status              text        NOT NULL DEFAULT 'PENDING'
                                    CHECK (status IN ('PENDING', 'PROCESSING', 'SUCCEEDED', 'FAILED')),
    failure_reason      text        CHECK (failure_reason ~ '^[a-z_]{1,64}$'),
    transfer_id         bigint      REFERENCES transfer (id),
    idempotency_key_id  bigint      UNIQUE,  -- one key accepts one payment
    attempts            smallint    NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner         text        CHECK (length(lease_owner) <= 100),
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    settled_at          timestamptz,
    CHECK (source_account_id <> target_account_id),
    CHECK ((status = 'SUCCEEDED') = (transfer_id IS NOT NULL)),
    CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL)),
    CHECK ((status IN ('SUCCEEDED', 'FAILED')) = (settled_at IS NOT NULL)),
    CHECK ((status = 'PROCESSING') = (lease_until IS NOT NULL)),
    FOREIGN KEY (source_account_id, currency) REFERENCES account (id, currency),
    FOREIGN KEY (target_account_id, currency) REFERENCES account (id, currency)
);
-- One payment per transfer; partial, so that accepting a payment writes no entry here.
CREATE UNIQUE INDEX payment_transfer_key ON payment (transfer_id) WHERE transfer_id IS NOT NULL;
-- The queue: only payments not yet final, in the order they came.
CREATE INDEX payment_due_idx ON payment (id) WHERE status IN ('PENDING', 'PROCESSING');
CREATE INDEX payment_source_idx ON payment (source_account_id, id);
CREATE INDEX payment_target_idx ON payment (target_account_id, id);

-- A payment's settlement is a transfer of its own kind.
ALTER TABLE transfer DROP CONSTRAINT transfer_kind_check,
    ADD CONSTRAINT transfer_kind_check
        CHECK (kind IN ('transfer', 'opening', 'reversal', 'deposit', 'payment'));

CREATE VIEW payment_out AS
SELECT p.id, p.status, s.user_id AS source_user_id, d.user_id AS target_user_id,
       (SELECT row_to_json(r)
          FROM (SELECT p.id, p.status, s.account_number AS from_account_number,
                       d.account_number AS to_account_number,
                       money_text(p.amount_minor, c.exponent) AS amount, p.currency,
                       p.description, p.failure_reason, p.transfer_id AS transaction_id,
                       '/api/v1/payments/' || p.id AS poll_url,
                       utc_text(p.created_at) AS created_at,
                       utc_text(p.updated_at) AS updated_at) r) AS body
  FROM payment p
  JOIN account s ON s.id = p.source_account_id
  JOIN account d ON d.id = p.target_account_id
  JOIN currency c ON c.code = p.currency;

-- POST /payments: everything that can be decided now is decided now (unknown or foreign account,
-- self-payment, currency, decimals), as for a transfer; the funds are checked when the payment
-- settles. Accepted: the payment row and the key's answer (202) commit together, and the workers
-- listening on 'payment_due' are woken when it commits.
CREATE FUNCTION create_payment_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_from_number text, p_to_number text, p_amount text, p_currency text, p_description text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_request record;
    v_problem text;
    v_detail text;
    v_payment record;
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
        RETURN;
    END IF;
    -- What move_money_v1 checks for a transfer, checked now: nothing waits for the worker
    -- that can be refused at once.
    v_problem := v_request.problem;
    v_detail := v_request.detail;
    IF v_problem IS NULL AND v_request.source_id = v_request.target_id THEN
        v_problem := 'self_transfer';
        v_detail := 'the source and the recipient are the same account';
    ELSIF v_problem IS NULL AND v_request.currency <> v_request.target_currency THEN
        v_problem := 'currency_mismatch';
        v_detail := format('the recipient account holds %s, not %s', v_request.target_currency,
                           v_request.currency);
    ELSIF v_problem IS NULL AND v_request.currency <> v_request.source_currency THEN
        v_problem := 'currency_mismatch';
        v_detail := format('the source account holds %s, not %s', v_request.source_currency,
                           v_request.currency);
    END IF;

    IF v_problem IS NOT NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(v_problem, v_detail) b;
    ELSE
        INSERT INTO payment (user_id, source_account_id, target_account_id, amount_minor, currency,
                             description, idempotency_key_id)
        VALUES (p_user_id, v_request.source_id, v_request.target_id, v_request.amount_minor,
                v_request.currency, p_description, v_claim.key_id)
        RETURNING id, created_at INTO v_payment;
        status := 202;
        -- The body as payment_out renders it, from what is at hand (no second read of the row).
        body := (SELECT row_to_json(r)::text
                   FROM (SELECT v_payment.id AS id, 'PENDING' AS status,
                                v_request.source_number AS from_account_number,
                                p_to_number AS to_account_number,
                                money_text(v_request.amount_minor,
                                           (SELECT c.exponent FROM currency c
                                             WHERE c.code = v_request.currency)) AS amount,
                                v_request.currency AS currency, p_description AS description,
                                NULL::text AS failure_reason, NULL::bigint AS transaction_id,
                                '/api/v1/payments/' || v_payment.id AS poll_url,
                                utc_text(v_payment.created_at) AS created_at,
                                utc_text(v_payment.created_at) AS updated_at) r);
        -- Wake the workers, unless an older payment is still waiting: then they are busy, and
        -- a busy loop claims again until it finds nothing. NOTIFY serialises the commits of the
        -- transactions that send it, so under load it is sent rarely; the workers' poll covers
        -- the moment a loop found nothing just before this commit.
        IF NOT EXISTS (SELECT 1 FROM payment q
                        WHERE q.status = 'PENDING' AND q.id < v_payment.id) THEN
            PERFORM pg_notify('payment_due', '');
        END IF;
    END IF;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- A worker's claim: up to p_limit payments due, oldest first, PENDING or PROCESSING under a lease
-- that ran out (its worker died or stalled), marked PROCESSING for p_worker until now + p_lease_s.
-- SKIP LOCKED: workers claiming at once never take the same payment and never wait on each other.
-- A payment claimed p_attempts_max times without settling fails instead of being claimed again,
-- so one that cannot be settled never holds up the queue.
CREATE FUNCTION claim_payments_v1(p_worker text, p_limit int, p_lease_s int, p_attempts_max int)
RETURNS TABLE (id bigint, claimed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY  -- the ones failed here (claimed false), for the worker's metrics and log
    UPDATE payment p
       SET status = 'FAILED', failure_reason = 'settlement_error', lease_owner = NULL,
           lease_until = NULL, settled_at = now(), updated_at = now()
     WHERE p.id IN (SELECT q.id FROM payment q
                     WHERE q.status = 'PROCESSING' AND q.lease_until < now()
                       AND q.attempts >= p_attempts_max
                     ORDER BY q.id LIMIT p_limit FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING p.id, false;
    RETURN QUERY
    UPDATE payment p
       SET status = 'PROCESSING', lease_owner = p_worker,
           lease_until = now() + make_interval(secs => p_lease_s),
           attempts = p.attempts + 1, updated_at = now()
     WHERE p.id IN (SELECT q.id FROM payment q
                     WHERE q.status = 'PENDING'
                        OR (q.status = 'PROCESSING' AND q.lease_until < now()
                            AND q.attempts < p_attempts_max)
                     ORDER BY q.id LIMIT p_limit FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING p.id, true;
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
CREATE FUNCTION settle_payments_v1(p_worker text, p_ids bigint[])
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
        outcome := CASE WHEN v_moved.problem IS NULL THEN 'succeeded' ELSE 'failed' END;
        latency_s := extract(epoch FROM clock_timestamp() - v_payment.created_at);
        parties := CASE WHEN v_moved.problem IS NULL  -- whose books, and cached reads, changed
                        THEN ARRAY[v_payment.source_user_id, v_payment.target_user_id]
                        ELSE ARRAY[]::bigint[] END;
        RETURN NEXT;
    END LOOP;
END $$;

-- A worker that stops gives back what it claimed and did not settle, so nobody waits for a lease;
-- a claim given back was no attempt.
CREATE FUNCTION release_payments_v1(p_worker text, p_ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE payment p
       SET status = 'PENDING', lease_owner = NULL, lease_until = NULL,
           attempts = p.attempts - 1, updated_at = now()
     WHERE p.id = ANY(p_ids) AND p.status = 'PROCESSING' AND p.lease_owner = p_worker
$$;

