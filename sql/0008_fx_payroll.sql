-- FX quotes and cross-currency transfers through clearing accounts; payroll jobs paid by the
-- worker in batches. Every money leg goes through move_money_v1, so each leg writes its transfer
-- and two ledger entries like any other, and chains like any other.

-- One FX clearing account per currency, owned by nobody: an FX transfer pays the sender's money
-- into the clearing account of its currency and the recipient out of the clearing account of
-- the other. Their balances are the service's FX position, so they may go below zero.
ALTER TABLE account DROP CONSTRAINT account_kind_check,
    ADD CONSTRAINT account_kind_check CHECK (kind IN ('customer', 'funding', 'clearing'));
ALTER TABLE account DROP CONSTRAINT account_check,
    ADD CONSTRAINT account_balance_check CHECK (balance_minor >= 0 OR kind IN ('funding', 'clearing'));
ALTER TABLE account DROP CONSTRAINT account_account_number_check,
    ADD CONSTRAINT account_account_number_check
        CHECK (account_number ~ '^(AC[0-9A-F]{14}|FUND[A-Z]{3}|CLEAR[A-Z]{3})$');
CREATE UNIQUE INDEX account_clearing_currency_key ON account (currency) WHERE kind = 'clearing';
INSERT INTO account (account_number, kind, currency)
SELECT 'CLEAR' || code, 'clearing', code FROM currency;

-- Both legs of an FX transfer are of kind 'fx'; a payroll item's payment is of kind 'payroll'.
-- Neither is reversible by reverse_transfer_v1 (it reverses 'transfer' and 'payment' only): one
-- leg of an FX transfer alone must never be sent back.
ALTER TABLE transfer DROP CONSTRAINT transfer_kind_check,
    ADD CONSTRAINT transfer_kind_check
        CHECK (kind IN ('transfer', 'opening', 'reversal', 'deposit', 'payment', 'fx', 'payroll'));

-- A rate locked for one user, for a while, for one transfer. The rate and both amounts are
-- stored as quoted and the transfer uses them, never a recomputed rate. EXPIRED is not stored:
-- it is ACTIVE past expires_at, read from the database's clock. A used quote names its two legs
-- and the accounts they joined.
CREATE TABLE fx_quote (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id              bigint      NOT NULL REFERENCES app_user (id),
    from_currency        text        NOT NULL REFERENCES currency (code),
    to_currency          text        NOT NULL REFERENCES currency (code),
    rate                 numeric     NOT NULL CHECK (rate > 0 AND scale(rate) <= 8),
    from_amount_minor    bigint      NOT NULL CHECK (from_amount_minor > 0),
    to_amount_minor      bigint      NOT NULL CHECK (to_amount_minor > 0),
    rates_as_of          timestamptz,  -- the rate source's own time, when it gave one
    status               text        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'USED')),
    expires_at           timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    used_at              timestamptz,
    transfer_id          bigint      UNIQUE REFERENCES transfer (id),  -- sender -> clearing
    counter_transfer_id  bigint      UNIQUE REFERENCES transfer (id),  -- clearing -> recipient
    source_account_id    bigint      REFERENCES account (id),
    target_account_id    bigint      REFERENCES account (id),
    CHECK (from_currency <> to_currency),
    CHECK (expires_at > created_at),
    CHECK ((status = 'USED') = (used_at IS NOT NULL)),
    CHECK ((status = 'USED') = (transfer_id IS NOT NULL)),
    CHECK ((status = 'USED') = (counter_transfer_id IS NOT NULL)),
    CHECK ((status = 'USED') = (source_account_id IS NOT NULL AND target_account_id IS NOT NULL))
);
CREATE INDEX fx_quote_user_idx ON fx_quote (user_id, id);

CREATE VIEW fx_quote_out AS
SELECT q.id, q.user_id,
       (SELECT row_to_json(r)
          FROM (SELECT q.id, q.from_currency, q.to_currency, q.rate::text AS rate,
                       money_text(q.from_amount_minor, f.exponent) AS from_amount,
                       money_text(q.to_amount_minor, t.exponent) AS to_amount,
                       utc_text(q.expires_at) AS expires_at,
                       CASE WHEN q.status = 'ACTIVE'
                            THEN greatest(0, ceil(extract(epoch FROM q.expires_at - now())))::int
                            ELSE 0 END AS seconds_remaining,
                       CASE WHEN q.status = 'USED' THEN 'USED'
                            WHEN q.expires_at <= now() THEN 'EXPIRED'
                            ELSE 'ACTIVE' END AS status,
                       q.transfer_id AS transaction_id,
                       utc_text(q.created_at) AS created_at) r) AS body
  FROM fx_quote q
  JOIN currency f ON f.code = q.from_currency
  JOIN currency t ON t.code = q.to_currency;

-- A transaction as its parties see it. An FX leg is shown as the customer's transfer it is part
-- of: from the sender's account to the recipient's, in the leg's own amount and currency (the
-- sender's leg in from_currency, the recipient's in to_currency), with the quote's rate and the
-- other leg's amount as counter_amount; both parties may read both legs. Any other transfer is
-- rendered exactly as before.
CREATE OR REPLACE VIEW transfer_out AS
SELECT t.id, coalesce(xs.user_id, s.user_id) AS source_user_id,
       coalesce(xd.user_id, d.user_id) AS target_user_id,
       CASE WHEN x.id IS NULL THEN
       (SELECT row_to_json(r)
          FROM (SELECT t.id, s.account_number AS from_account_number,
                       d.account_number AS to_account_number,
                       money_text(t.amount_minor, c.exponent) AS amount, t.currency, t.status,
                       t.kind, t.description, t.reverses_id AS reverses,
                       utc_text(t.created_at) AS created_at) r)
       ELSE
       (SELECT row_to_json(r)
          FROM (SELECT t.id, xs.account_number AS from_account_number,
                       xd.account_number AS to_account_number,
                       money_text(t.amount_minor, c.exponent) AS amount, t.currency, t.status,
                       t.kind, t.description, t.reverses_id AS reverses,
                       utc_text(t.created_at) AS created_at, x.rate::text AS fx_rate,
                       x.id AS fx_quote_id, money_text(x.counter_minor, xc.exponent) AS counter_amount,
                       x.counter_currency) r)
       END AS body
  FROM transfer t
  JOIN account s ON s.id = t.source_account_id
  JOIN account d ON d.id = t.target_account_id
  JOIN currency c ON c.code = t.currency
  LEFT JOIN LATERAL (
      SELECT q.id, q.rate, q.source_account_id, q.target_account_id,
             CASE WHEN q.transfer_id = t.id THEN q.to_amount_minor
                  ELSE q.from_amount_minor END AS counter_minor,
             CASE WHEN q.transfer_id = t.id THEN q.to_currency
                  ELSE q.from_currency END AS counter_currency
        FROM fx_quote q
       WHERE t.kind = 'fx' AND (q.transfer_id = t.id OR q.counter_transfer_id = t.id)) x ON true
  LEFT JOIN account xs ON xs.id = x.source_account_id
  LEFT JOIN account xd ON xd.id = x.target_account_id
  LEFT JOIN currency xc ON xc.code = x.counter_currency;

-- A problem this migration's functions answer with, beside business_problem's.
CREATE FUNCTION fx_problem_v1(p_code text, p_detail text, OUT status int, OUT body text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p.status, problem_text(p.status, p.code, p.title, p_detail)
      FROM (VALUES ('quote_used', 409, 'Quote already used'),
                   ('quote_expired', 410, 'Quote expired')) AS p (code, status, title)
     WHERE p.code = p_code
$$;

-- POST /fx/quotes: the quote as the API computed it from the rate source (the rate, and
-- to_amount rounded half-even, are decided in Python, where decimal rounding is explicit), its
-- expiry from the database's clock. The key is optional.
CREATE FUNCTION create_fx_quote_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_from_currency text, p_to_currency text, p_rate text, p_from_minor bigint,
    p_to_minor bigint, p_rates_as_of timestamptz, p_quote_ttl_s int,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_quote_id bigint;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;
    INSERT INTO fx_quote (user_id, from_currency, to_currency, rate, from_amount_minor,
                          to_amount_minor, rates_as_of, expires_at)
    VALUES (p_user_id, p_from_currency, p_to_currency, p_rate::numeric, p_from_minor, p_to_minor,
            p_rates_as_of, now() + make_interval(secs => p_quote_ttl_s))
    RETURNING id INTO v_quote_id;
    status := 201;
    SELECT o.body::text INTO body FROM fx_quote_out o WHERE o.id = v_quote_id;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- POST /transactions with fx_quote_id: in one transaction, the quote is locked and consumed and
-- both legs move. The quote's row lock makes it single-use: a concurrent transfer with the same
-- quote waits, then finds it USED (409). The four accounts are locked first, in id order, so two
-- FX transfers in opposite directions (which share both clearing accounts) cannot deadlock.
CREATE FUNCTION fx_transfer_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_from_number text, p_to_number text, p_amount text, p_currency text,
    p_description text, p_quote_id bigint,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_quote record;
    v_source record;
    v_target record;
    v_clear_from bigint;
    v_clear_to bigint;
    v_problem text;
    v_detail text;
    v_out record;
    v_in record;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    SELECT q.id, q.user_id, q.from_currency, q.to_currency, q.from_amount_minor,
           q.to_amount_minor, q.status, q.expires_at <= now() AS expired
      INTO v_quote FROM fx_quote q WHERE q.id = p_quote_id FOR NO KEY UPDATE;
    IF v_quote.id IS NOT NULL AND p_amount IS NOT NULL
       AND amount_minor_v1(p_amount, v_quote.from_currency) IS DISTINCT FROM v_quote.from_amount_minor
       AND v_quote.user_id = p_user_id THEN
        DELETE FROM idempotency_key k WHERE k.id = v_claim.key_id;  -- refused, not run
        stored := false;
        status := 422;
        body := validation_problem_v1('amount', 'must equal the quote''s from_amount, or be left out');
        RETURN;
    END IF;
    SELECT a.id, a.currency, a.user_id INTO v_target FROM account a
     WHERE a.account_number = p_to_number AND a.kind = 'customer';
    IF p_from_number IS NOT NULL THEN
        SELECT a.id, a.currency INTO v_source FROM account a
         WHERE a.account_number = p_from_number AND a.user_id = p_user_id;
    ELSE
        SELECT a.id, a.currency INTO v_source FROM account a
         WHERE a.user_id = p_user_id AND a.currency = v_quote.from_currency;
    END IF;

    IF v_quote.id IS NULL OR v_quote.user_id <> p_user_id THEN
        v_problem := 'not_found';
        v_detail := 'no such quote';
    ELSIF v_quote.status = 'USED' THEN
        v_problem := 'quote_used';
        v_detail := 'this quote was used already';
    ELSIF v_quote.expired THEN
        v_problem := 'quote_expired';
        v_detail := 'this quote has expired: ask for a new one';
    ELSIF v_target.id IS NULL THEN
        v_problem := 'unknown_account';
        v_detail := 'no such recipient account';
    ELSIF p_from_number IS NOT NULL AND v_source.id IS NULL THEN
        v_problem := 'unknown_account';
        v_detail := 'no such source account of yours';
    ELSIF v_source.id IS NULL THEN
        v_problem := 'currency_mismatch';
        v_detail := format('you hold no %s account', v_quote.from_currency);
    ELSIF v_source.currency <> v_quote.from_currency
       OR coalesce(p_currency, v_quote.from_currency) <> v_quote.from_currency THEN
        v_problem := 'currency_mismatch';
        v_detail := format('the quote sends %s', v_quote.from_currency);
    ELSIF v_target.currency <> v_quote.to_currency THEN
        v_problem := 'currency_mismatch';
        v_detail := format('the recipient account holds %s, the quote pays %s',
                           v_target.currency, v_quote.to_currency);
    END IF;
    IF v_problem IS NOT NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(v_problem, v_detail) b;
        IF status IS NULL THEN
            SELECT b.status, b.body INTO status, body FROM fx_problem_v1(v_problem, v_detail) b;
        END IF;
        PERFORM finish_idempotency_key(v_claim.key_id, status, body);
        RETURN;
    END IF;

    SELECT a.id INTO v_clear_from FROM account a
     WHERE a.kind = 'clearing' AND a.currency = v_quote.from_currency;
    SELECT a.id INTO v_clear_to FROM account a
     WHERE a.kind = 'clearing' AND a.currency = v_quote.to_currency;
    PERFORM 1 FROM account a WHERE a.id IN (v_source.id, v_target.id, v_clear_from, v_clear_to)
      ORDER BY a.id FOR NO KEY UPDATE;
    SELECT * INTO v_out FROM move_money_v1(v_source.id, v_clear_from, v_quote.from_amount_minor,
                                            v_quote.from_currency, 'fx', p_description, NULL,
                                            v_claim.key_id);
    IF v_out.problem IS NOT NULL THEN  -- insufficient funds: the quote stays ACTIVE
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM answer_money_v1(v_claim.key_id, NULL, v_out.problem, v_out.detail) a;
        RETURN;
    END IF;
    SELECT * INTO v_in FROM move_money_v1(v_clear_to, v_target.id, v_quote.to_amount_minor,
                                           v_quote.to_currency, 'fx', p_description, NULL, NULL);
    ASSERT v_in.problem IS NULL, 'a clearing account pays any FX leg';
    UPDATE fx_quote q
       SET status = 'USED', used_at = now(), transfer_id = v_out.transfer_id,
           counter_transfer_id = v_in.transfer_id, source_account_id = v_source.id,
           target_account_id = v_target.id
     WHERE q.id = v_quote.id;
    SELECT a.status, a.body, a.parties INTO status, body, parties
      FROM answer_money_v1(v_claim.key_id, v_out.transfer_id, NULL, NULL) a;
    -- To both parties, in this transaction (emit_event_v1 is made by 0009, before any call).
    PERFORM emit_event_v1('transaction.created', parties, body::json);
END $$;

-- A bulk payment from one account: its items are paid by the worker in index order, in
-- batches. checkpoint is the last index paid (items count from 1), and each batch's transfers
-- and its new checkpoint commit together. QUEUED: accepted, not started. PROCESSING: claimed by
-- one worker loop (lease_owner) until lease_until; another takes it over after that.
CREATE TABLE payroll_job (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             bigint      NOT NULL REFERENCES app_user (id),
    source_account_id   bigint      NOT NULL REFERENCES account (id),
    name                text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status              text        NOT NULL DEFAULT 'QUEUED'
                                    CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED',
                                                      'COMPLETED_WITH_FAILURES')),
    total_items         int         NOT NULL CHECK (total_items BETWEEN 1 AND 10000),
    succeeded_items     int         NOT NULL DEFAULT 0 CHECK (succeeded_items >= 0),
    failed_items        int         NOT NULL DEFAULT 0 CHECK (failed_items >= 0),
    checkpoint          int         NOT NULL DEFAULT 0,
    idempotency_key_id  bigint      UNIQUE,  -- one key accepts one job
    lease_owner         text        CHECK (length(lease_owner) <= 100),
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    CHECK (checkpoint BETWEEN 0 AND total_items),
    CHECK (succeeded_items + failed_items = checkpoint),
    CHECK ((status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES')) = (finished_at IS NOT NULL)),
    CHECK (finished_at IS NULL OR checkpoint = total_items),
    CHECK ((status = 'COMPLETED_WITH_FAILURES') = (finished_at IS NOT NULL AND failed_items > 0)),
    CHECK ((status = 'PROCESSING') = (lease_until IS NOT NULL))
);
-- The queue: only jobs not yet finished (also what payroll_queue_stats counts).
CREATE INDEX payroll_job_due_idx ON payroll_job (id, status) WHERE status IN ('QUEUED', 'PROCESSING');
CREATE INDEX payroll_job_user_idx ON payroll_job (user_id, id);

-- One payment of a job. (job_id, item_index) is its identity: the row is locked and its status
-- read before it is paid, and SUCCEEDED is written in the transaction that moves its money, so
-- an item is paid once even if a batch were run again without its checkpoint. transfer_id is
-- unique: no transfer pays two items.
CREATE TABLE payroll_item (
    job_id             bigint NOT NULL REFERENCES payroll_job (id),
    item_index         int    NOT NULL CHECK (item_index >= 1),
    target_account_id  bigint NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    currency           text   NOT NULL REFERENCES currency (code),
    reference          text   CHECK (length(reference) <= 200),
    status             text   NOT NULL DEFAULT 'PENDING'
                              CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    failure_reason     text   CHECK (failure_reason ~ '^[a-z_]{1,64}$'),
    transfer_id        bigint UNIQUE REFERENCES transfer (id),
    PRIMARY KEY (job_id, item_index),
    FOREIGN KEY (target_account_id, currency) REFERENCES account (id, currency),
    CHECK ((status = 'SUCCEEDED') = (transfer_id IS NOT NULL)),
    CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL))
);
CREATE INDEX payroll_item_status_idx ON payroll_item (job_id, status, item_index);

CREATE VIEW payroll_job_out AS
SELECT j.id, j.user_id,
       (SELECT row_to_json(r)
          FROM (SELECT j.id, j.name, j.status, a.account_number AS from_account_number,
                       j.total_items, j.checkpoint AS processed_items, j.succeeded_items,
                       j.failed_items, j.checkpoint, j.checkpoint || '/' || j.total_items AS progress,
                       '/api/v1/payroll/jobs/' || j.id AS poll_url,
                       utc_text(j.created_at) AS created_at, utc_text(j.started_at) AS started_at,
                       utc_text(j.finished_at) AS finished_at) r) AS body
  FROM payroll_job j JOIN account a ON a.id = j.source_account_id;

CREATE VIEW payroll_item_out AS
SELECT i.job_id, i.item_index, i.status,
       (SELECT row_to_json(r)
          FROM (SELECT i.item_index AS index, a.account_number AS to_account_number,
                       money_text(i.amount_minor, c.exponent) AS amount, i.currency, i.reference,
                       i.status, i.failure_reason, i.transfer_id AS transaction_id) r) AS body
  FROM payroll_item i
  JOIN account a ON a.id = i.target_account_id
  JOIN currency c ON c.code = i.currency;

-- POST /payroll/jobs: the items arrive as parallel arrays (one round trip, one set-based
-- insert). The source is the caller's account named by p_from_number, or else the caller's
-- account in the items' currency, or else the caller's first account. Every item is checked
-- before anything is written; any fault is a validation error naming each faulty item (refused
-- before it ran: not stored with the key). Accepted: the job, its items, its audit row and the
-- key's answer commit together, and the workers listening on 'payroll_due' are woken.
CREATE FUNCTION create_payroll_job_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int, p_name text,
    p_from_number text, p_to_numbers text[], p_amounts text[], p_currencies text[],
    p_references text[], p_ip text, p_request_id text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_source record;
    v_currency text;
    v_errors json;
    v_job_id bigint;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    v_currency := (SELECT min(c) FROM unnest(p_currencies) c);
    IF p_from_number IS NOT NULL THEN
        SELECT a.id, a.currency INTO v_source FROM account a
         WHERE a.account_number = p_from_number AND a.user_id = p_user_id;
    ELSE
        SELECT a.id, a.currency INTO v_source FROM account a
         WHERE a.user_id = p_user_id AND (v_currency IS NULL OR a.currency = v_currency)
         ORDER BY a.id LIMIT 1;
    END IF;
    IF v_source.id IS NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(
            CASE WHEN p_from_number IS NULL THEN 'currency_mismatch' ELSE 'unknown_account' END,
            CASE WHEN p_from_number IS NULL THEN format('you hold no %s account', v_currency)
                 ELSE 'no such source account of yours' END) b;
        PERFORM finish_idempotency_key(v_claim.key_id, status, body);
        RETURN;
    END IF;

    -- Every fault first (a read of the arrays), then, when there is none, the insert (a second).
    SELECT json_agg(e ORDER BY e.index) INTO v_errors
      FROM (SELECT format('items.%s.%s', f.n - 1, split_part(f.fault, ':', 1)) AS field,
                   ltrim(split_part(f.fault, ':', 2)) AS message, f.n AS index
              FROM (SELECT u.n,
                           CASE WHEN a.id IS NULL THEN 'to_account_number: no such account'
                                WHEN a.id = v_source.id
                                THEN 'to_account_number: the source account itself'
                                WHEN coalesce(u.currency, v_source.currency) <> v_source.currency
                                THEN format('currency: the source account holds %s',
                                            v_source.currency)
                                WHEN a.currency <> v_source.currency
                                THEN format('to_account_number: the account holds %s, not %s',
                                            a.currency, v_source.currency)
                                WHEN amount_minor_v1(u.amount, v_source.currency) IS NULL
                                THEN format('amount: %s takes at most %s decimals',
                                            v_source.currency,
                                            (SELECT c.exponent FROM currency c
                                              WHERE c.code = v_source.currency))
                           END AS fault
                      FROM unnest(p_to_numbers, p_amounts, p_currencies)
                           WITH ORDINALITY AS u (to_number, amount, currency, n)
                      LEFT JOIN account a
                        ON a.account_number = u.to_number AND a.kind = 'customer') f
             WHERE f.fault IS NOT NULL
             ORDER BY f.n LIMIT 100) e;
    IF v_errors IS NOT NULL THEN
        DELETE FROM idempotency_key k WHERE k.id = v_claim.key_id;  -- refused, not run
        stored := false;
        status := 422;
        body := (SELECT row_to_json(p)::text
                   FROM (SELECT '/problems/validation_error' AS type, 'Validation failed' AS title,
                                422 AS status, 'validation_error' AS code,
                                format('%s item(s) cannot be paid', json_array_length(v_errors))
                                    AS detail, v_errors AS errors) p);
        RETURN;
    END IF;

    INSERT INTO payroll_job (user_id, source_account_id, name, total_items, idempotency_key_id)
    VALUES (p_user_id, v_source.id, p_name, cardinality(p_to_numbers), v_claim.key_id)
    RETURNING id INTO v_job_id;
    INSERT INTO payroll_item (job_id, item_index, target_account_id, amount_minor, currency,
                              reference)
    SELECT v_job_id, u.n, a.id, amount_minor_v1(u.amount, v_source.currency), v_source.currency,
           u.reference
      FROM unnest(p_to_numbers, p_amounts, p_references)
           WITH ORDINALITY AS u (to_number, amount, reference, n)
      JOIN account a ON a.account_number = u.to_number AND a.kind = 'customer';
    INSERT INTO audit_log (actor_id, action, target, ip, request_id, details)
    VALUES (p_user_id, 'payroll_job.created', 'payroll_job:' || v_job_id, p_ip, p_request_id,
            jsonb_build_object('name', p_name, 'total_items', cardinality(p_to_numbers)));
    status := 202;
    parties := ARRAY[p_user_id];
    SELECT o.body::text INTO body FROM payroll_job_out o WHERE o.id = v_job_id;
    PERFORM pg_notify('payroll_due', '');
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- A worker loop's claim: the job it is already working on (its lease still good), else the
-- oldest QUEUED job or one whose lease ran out (its worker died or stalled), now this loop's
-- until now + p_lease_s. SKIP LOCKED: loops claiming at once never take the same job.
CREATE FUNCTION claim_payroll_job_v1(p_worker text, p_lease_s int) RETURNS SETOF bigint
LANGUAGE sql AS $$
    UPDATE payroll_job j
       SET status = 'PROCESSING', lease_owner = p_worker,
           lease_until = now() + make_interval(secs => p_lease_s),
           started_at = coalesce(j.started_at, now())
     WHERE j.id = (SELECT q.id FROM payroll_job q
                    WHERE q.status = 'QUEUED'
                       OR (q.status = 'PROCESSING'
                           AND (q.lease_owner = p_worker OR q.lease_until < now()))
                    ORDER BY q.lease_owner IS DISTINCT FROM p_worker, q.id
                    LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING j.id
$$;

-- One batch of a job, in one transaction: the next p_batch_size items after the checkpoint, in
-- index order. An item found already final (its batch ran before, and only the checkpoint was
-- lost) is counted as it is and never paid again; an item that cannot be afforded FAILS with its
-- reason, and the job goes on. Then the checkpoint and counts advance, and the job finishes after
-- its last item. Nothing is done unless the job is still this worker's. The source and every
-- recipient of the batch are locked first, in id order, so a batch and a transfer (which locks
-- its two accounts in id order too) never deadlock. Returns the job's state and whose books
-- changed.
-- The batch is paid as a set: what move_money_v1 does for one transfer (the funds check, both
-- balances, the entries and their hash chains, ledger_entry_hash of 0006) is worked out item by
-- item in memory, under those locks, and then written by three statements, transfers, entries
-- and balances with their chains' heads, instead of five statements an item.
CREATE FUNCTION pay_payroll_batch_v1(p_worker text, p_job_id bigint, p_batch_size int,
                                     p_lease_s int)
RETURNS TABLE (job_status text, checkpoint int, paid int, failed int, parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_job record;
    v_item record;
    v_at timestamptz := now();
    v_at_text text := utc_text(now());
    v_last int;
    v_paid int := 0;
    v_failed int := 0;
    v_position int := 0;
    v_reason text;
    v_transfer bigint;
    v_debit bigint;
    v_credit bigint;
    v_amount text;
    v_hash bytea;
    v_source record;
    v_source_balance bigint;
    v_source_head bytea;
    v_target_balance bigint;
    v_target_head bytea;
    v_parties bigint[] := ARRAY[]::bigint[];
    v_indexes int[] := ARRAY[]::int[];
    v_reasons text[] := ARRAY[]::text[];
    v_transfer_ids bigint[] := ARRAY[]::bigint[];
    -- each PENDING item's target, and its balance and chain head after the item (by position)
    v_targets bigint[] := ARRAY[]::bigint[];
    v_balances_after bigint[] := ARRAY[]::bigint[];
    v_heads_after bytea[] := ARRAY[]::bytea[];
    -- the transfers and entries to write
    v_t_ids bigint[] := ARRAY[]::bigint[];
    v_t_targets bigint[] := ARRAY[]::bigint[];
    v_t_amounts bigint[] := ARRAY[]::bigint[];
    v_t_descriptions text[] := ARRAY[]::text[];
    v_e_ids bigint[] := ARRAY[]::bigint[];
    v_e_transfers bigint[] := ARRAY[]::bigint[];
    v_e_accounts bigint[] := ARRAY[]::bigint[];
    v_e_directions text[] := ARRAY[]::text[];
    v_e_amounts bigint[] := ARRAY[]::bigint[];
    v_e_balances bigint[] := ARRAY[]::bigint[];
    v_e_prevs bytea[] := ARRAY[]::bytea[];
    v_e_hashes bytea[] := ARRAY[]::bytea[];
BEGIN
    SELECT j.id, j.source_account_id, j.total_items, j.checkpoint, j.succeeded_items,
           j.failed_items, j.name, a.user_id AS source_user_id
      INTO v_job FROM payroll_job j JOIN account a ON a.id = j.source_account_id
     WHERE j.id = p_job_id AND j.status = 'PROCESSING' AND j.lease_owner = p_worker
       FOR NO KEY UPDATE OF j;
    IF v_job.id IS NULL THEN
        RETURN QUERY SELECT 'LOST'::text, NULL::int, 0, 0, ARRAY[]::bigint[];
        RETURN;
    END IF;
    v_last := least(v_job.checkpoint + p_batch_size, v_job.total_items);
    PERFORM 1 FROM account a
     WHERE a.id IN (SELECT v_job.source_account_id
                    UNION SELECT i.target_account_id FROM payroll_item i
                           WHERE i.job_id = p_job_id
                             AND i.item_index > v_job.checkpoint AND i.item_index <= v_last)
     ORDER BY a.id FOR NO KEY UPDATE;
    SELECT a.kind, a.currency, a.account_number, a.balance_minor, a.ledger_head, c.exponent
      INTO v_source FROM account a JOIN currency c ON c.code = a.currency
     WHERE a.id = v_job.source_account_id;
    v_source_balance := v_source.balance_minor;
    v_source_head := v_source.ledger_head;

    PERFORM 1 FROM payroll_item i
     WHERE i.job_id = p_job_id AND i.item_index > v_job.checkpoint AND i.item_index <= v_last
     ORDER BY i.item_index FOR NO KEY UPDATE;
    FOR v_item IN
        SELECT o.*, a.user_id AS target_user_id, a.account_number AS target_number,
               a.balance_minor AS target_balance, a.ledger_head AS target_head,
               -- the position of the previous PENDING item to the same account, if any (items
               -- already final come first, their money already in the balance)
               lag(o.position) OVER (PARTITION BY o.target_account_id ORDER BY o.item_index)
                   AS earlier_position
          FROM (SELECT i.item_index, i.target_account_id, i.amount_minor, i.currency,
                       i.reference, i.status,
                       CASE WHEN i.status = 'PENDING' THEN
                           (count(*) FILTER (WHERE i.status = 'PENDING')
                                OVER (ORDER BY i.item_index))::int END AS position
                  FROM payroll_item i
                 WHERE i.job_id = p_job_id AND i.item_index > v_job.checkpoint
                   AND i.item_index <= v_last) o
          JOIN account a ON a.id = o.target_account_id
         ORDER BY o.item_index
    LOOP
        IF v_item.status <> 'PENDING' THEN  -- final already: counted, never paid again
            v_paid := v_paid + (v_item.status = 'SUCCEEDED')::int;
            v_failed := v_failed + (v_item.status = 'FAILED')::int;
            CONTINUE;
        END IF;
        v_position := v_position + 1;
        IF v_item.earlier_position IS NULL THEN
            v_target_balance := v_item.target_balance;
            v_target_head := v_item.target_head;
        ELSE
            v_target_balance := v_balances_after[v_item.earlier_position];
            v_target_head := v_heads_after[v_item.earlier_position];
        END IF;
        v_reason := CASE
            WHEN v_item.target_account_id = v_job.source_account_id THEN 'self_transfer'
            WHEN v_item.currency <> v_source.currency THEN 'currency_mismatch'
            WHEN v_source.kind = 'customer' AND v_source_balance < v_item.amount_minor
                THEN 'insufficient_funds' END;
        v_transfer := NULL;
        IF v_reason IS NULL THEN
            v_transfer := nextval('transfer_id_seq');
            v_debit := nextval('ledger_entry_id_seq');
            v_credit := nextval('ledger_entry_id_seq');
            v_amount := money_text(v_item.amount_minor, v_source.exponent);
            v_e_ids := v_e_ids || v_debit || v_credit;
            v_e_transfers := v_e_transfers || v_transfer || v_transfer;
            v_e_accounts := v_e_accounts || v_job.source_account_id || v_item.target_account_id;
            v_e_directions := v_e_directions || 'debit'::text || 'credit'::text;
            v_e_amounts := v_e_amounts || v_item.amount_minor || v_item.amount_minor;
            v_e_prevs := v_e_prevs || v_source_head || v_target_head;
            v_source_balance := v_source_balance - v_item.amount_minor;
            v_target_balance := v_target_balance + v_item.amount_minor;
            v_hash := ledger_entry_hash(
                v_debit, v_transfer, v_source.account_number, 'debit', v_amount,
                v_source.currency, money_text(v_source_balance, v_source.exponent), v_at_text,
                v_source_head);
            v_source_head := v_hash;
            v_e_hashes := v_e_hashes || v_hash;
            v_hash := ledger_entry_hash(
                v_credit, v_transfer, v_item.target_number, 'credit', v_amount,
                v_source.currency, money_text(v_target_balance, v_source.exponent), v_at_text,
                v_target_head);
            v_target_head := v_hash;
            v_e_hashes := v_e_hashes || v_hash;
            v_e_balances := v_e_balances || v_source_balance || v_target_balance;
            v_t_ids := v_t_ids || v_transfer;
            v_t_targets := v_t_targets || v_item.target_account_id;
            v_t_amounts := v_t_amounts || v_item.amount_minor;
            v_t_descriptions := v_t_descriptions || coalesce(v_item.reference, v_job.name);
            v_paid := v_paid + 1;
            v_parties := v_parties || v_item.target_user_id;
        ELSE
            v_failed := v_failed + 1;
        END IF;
        v_targets := v_targets || v_item.target_account_id;
        v_balances_after := v_balances_after || v_target_balance;
        v_heads_after := v_heads_after || v_target_head;
        v_indexes := v_indexes || v_item.item_index;
        v_reasons := v_reasons || v_reason;
        v_transfer_ids := v_transfer_ids || v_transfer;
    END LOOP;

    IF cardinality(v_t_ids) > 0 THEN
        INSERT INTO transfer (id, source_account_id, target_account_id, amount_minor, currency,
                              kind, description, created_at)
        OVERRIDING SYSTEM VALUE
        SELECT u.id, v_job.source_account_id, u.target, u.amount, v_source.currency, 'payroll',
               u.description, v_at
          FROM unnest(v_t_ids, v_t_targets, v_t_amounts, v_t_descriptions)
               AS u (id, target, amount, description);
        INSERT INTO ledger_entry (id, transfer_id, account_id, direction, amount_minor,
                                  balance_after_minor, created_at, prev_hash, hash)
        OVERRIDING SYSTEM VALUE
        SELECT u.id, u.transfer_id, u.account_id, u.direction, u.amount, u.balance, v_at,
               u.prev_hash, u.hash
          FROM unnest(v_e_ids, v_e_transfers, v_e_accounts, v_e_directions, v_e_amounts,
                      v_e_balances, v_e_prevs, v_e_hashes)
               AS u (id, transfer_id, account_id, direction, amount, balance, prev_hash, hash);
        -- Each account's balance and head as its last item in the batch left them.
        UPDATE account a SET balance_minor = f.balance, ledger_head = f.head
          FROM (SELECT DISTINCT ON (u.id) u.id, u.balance, u.head
                  FROM unnest(v_targets, v_balances_after, v_heads_after) WITH ORDINALITY
                       AS u (id, balance, head, position)
                 ORDER BY u.id, u.position DESC) f
         WHERE a.id = f.id AND f.id <> v_job.source_account_id AND a.balance_minor <> f.balance;
        UPDATE account a SET balance_minor = v_source_balance, ledger_head = v_source_head
         WHERE a.id = v_job.source_account_id;
        v_parties := v_parties || v_job.source_user_id;
    END IF;
    -- The items paid or failed here, in one statement (their rows are locked already).
    UPDATE payroll_item i
       SET status = CASE WHEN u.reason IS NULL THEN 'SUCCEEDED' ELSE 'FAILED' END,
           failure_reason = u.reason, transfer_id = u.transfer_id
      FROM unnest(v_indexes, v_reasons, v_transfer_ids) AS u (item_index, reason, transfer_id)
     WHERE i.job_id = p_job_id AND i.item_index = u.item_index;
    IF v_last = v_job.total_items THEN
        UPDATE payroll_job j
           SET checkpoint = v_last, succeeded_items = j.succeeded_items + v_paid,
               failed_items = j.failed_items + v_failed,
               status = CASE WHEN j.failed_items + v_failed > 0 THEN 'COMPLETED_WITH_FAILURES'
                             ELSE 'COMPLETED' END,
               finished_at = now(), lease_owner = NULL, lease_until = NULL
         WHERE j.id = p_job_id;
        -- payroll_job.completed to the job's owner, with the job as it ended (webhooks, 0009).
        PERFORM emit_event_v1('payroll_job.completed', ARRAY[v_job.source_user_id],
                              (SELECT o.body FROM payroll_job_out o WHERE o.id = p_job_id));
    ELSE
        UPDATE payroll_job j
           SET checkpoint = v_last, succeeded_items = j.succeeded_items + v_paid,
               failed_items = j.failed_items + v_failed,
               lease_until = now() + make_interval(secs => p_lease_s)
         WHERE j.id = p_job_id;
    END IF;
    RETURN QUERY SELECT j.status, j.checkpoint, v_paid, v_failed, v_parties
                   FROM payroll_job j WHERE j.id = p_job_id;
END $$;

-- A worker that stops gives back the job it holds: its lease ends now, so the next claim (of
-- any worker) takes it over at its checkpoint.
CREATE FUNCTION release_payroll_jobs_v1(p_worker text, p_ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    UPDATE payroll_job j SET lease_until = now() - interval '1 second'
     WHERE j.id = ANY(p_ids) AND j.status = 'PROCESSING' AND j.lease_owner = p_worker
$$;
