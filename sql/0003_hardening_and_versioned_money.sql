-- Rules the schema now holds by itself, one byte shape of JSON, the audit log, deposits, and the
-- money functions named by version.
--
-- Versioned names: an API process calls transfer_funds_v1, never transfer_funds. During a rolling
-- deploy, processes of two adjacent releases run against one database; a release that changes a
-- function's arguments or answer adds transfer_funds_v2 beside v1, and a later release drops v1
-- once nothing calls it. The unversioned functions of 0002 stay for processes of the release
-- before this one, and go in a later migration.

-- Compact JSON everywhere: row_to_json over a row keeps key order and writes no spaces, where
-- json_build_object writes `{"id" : 3}`. Every body the service sends has one byte shape.
CREATE OR REPLACE FUNCTION problem_text(status int, code text, title text, detail text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT row_to_json(p)::text
      FROM (SELECT '/problems/' || $2 AS type, $3 AS title, $1 AS status, $2 AS code,
                   $4 AS detail) p
$$;

CREATE OR REPLACE VIEW account_out AS
SELECT a.id, a.user_id,
       (SELECT row_to_json(r)
          FROM (SELECT a.id, a.account_number, a.currency,
                       money_text(a.balance_minor, c.exponent) AS balance,
                       utc_text(a.created_at) AS created_at) r) AS body
  FROM account a JOIN currency c ON c.code = a.currency;

CREATE OR REPLACE VIEW transfer_out AS
SELECT t.id, s.user_id AS source_user_id, d.user_id AS target_user_id,
       (SELECT row_to_json(r)
          FROM (SELECT t.id, s.account_number AS from_account_number,
                       d.account_number AS to_account_number,
                       money_text(t.amount_minor, c.exponent) AS amount, t.currency, t.status,
                       t.kind, t.description, t.reverses_id AS reverses,
                       utc_text(t.created_at) AS created_at) r) AS body
  FROM transfer t
  JOIN account s ON s.id = t.source_account_id
  JOIN account d ON d.id = t.target_account_id
  JOIN currency c ON c.code = t.currency;

-- A transfer's currency is both accounts' currency: the keys say so, not only the functions.
ALTER TABLE account ADD CONSTRAINT account_id_currency_key UNIQUE (id, currency);
ALTER TABLE transfer
    ADD CONSTRAINT transfer_source_currency_fkey
        FOREIGN KEY (source_account_id, currency) REFERENCES account (id, currency),
    ADD CONSTRAINT transfer_target_currency_fkey
        FOREIGN KEY (target_account_id, currency) REFERENCES account (id, currency);

-- Money enters from outside only through a funding account: at registration, or an admin's deposit.
ALTER TABLE transfer DROP CONSTRAINT transfer_kind_check,
    ADD CONSTRAINT transfer_kind_check
        CHECK (kind IN ('transfer', 'opening', 'reversal', 'deposit'));

-- A stored answer is whole: a status and its body, or neither (the key is still in flight).
ALTER TABLE idempotency_key ADD CONSTRAINT idempotency_key_answer_whole
    CHECK ((response_status IS NULL) = (response_body IS NULL));

-- Who did what, for operators and auditors. Append-only; never a password, token or key.
CREATE TABLE audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    bigint      REFERENCES app_user (id),
    action      text        NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)*$' AND length(action) <= 64),
    target      text        CHECK (length(target) <= 200),
    ip          text        CHECK (length(ip) <= 64),
    request_id  text        CHECK (length(request_id) <= 128),
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, id);

-- Keys of the service's own, made here once and shared by every API host: page cursors are
-- signed with 'cursor', so that rotating the token key breaks no cursor in flight.
CREATE TABLE service_key (
    name    text  PRIMARY KEY CHECK (name ~ '^[a-z_]{1,32}$'),
    secret  bytea NOT NULL CHECK (length(secret) = 32)
);
-- gen_random_uuid() draws from the server's strong random source: two of them, hashed.
INSERT INTO service_key (name, secret)
VALUES ('cursor', sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));

-- History is append-only: a transfer, a ledger entry or an audit row, once written, is never
-- updated or deleted, whatever the role. A deliberate repair by an operator sets
-- `SET LOCAL payments.history_repair = 'on'` in its own transaction (and leaves its own trace).
-- Where the application connects with a role of its own, REVOKE UPDATE, DELETE on these tables
-- from that role as well.
CREATE FUNCTION refuse_history_edit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('payments.history_repair', true) = 'on' THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER transfer_append_only BEFORE UPDATE OR DELETE ON transfer
    FOR EACH ROW EXECUTE FUNCTION refuse_history_edit();
CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION refuse_history_edit();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_history_edit();

-- A validation error found in SQL (too many decimals for a currency named only by the account):
-- refused before it ran, so never stored with the key.
CREATE FUNCTION validation_problem_v1(p_field text, p_message text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT row_to_json(p)::text
      FROM (SELECT '/problems/validation_error' AS type, 'Validation failed' AS title,
                   422 AS status, 'validation_error' AS code, $1 || ': ' || $2 AS detail,
                   (SELECT json_agg(e) FROM (SELECT $1 AS field, $2 AS message) e) AS errors) p
$$;

-- The opening every keyed function shares, written once. `claimed`: go on (a fresh claim, or no
-- key at all); otherwise status and body are the answer to give back (a replay, or a refusal of
-- a key in flight or reused), and `stored` says whether it is a stored answer. A fresh claim's
-- answer is stored too, unless the caller refuses the request before it runs.
-- A concurrent claim of the same key waits on the unique index until the first commits, then
-- replays its answer: that is the fallback when Redis, and its in-flight marker, are gone.
CREATE FUNCTION claim_idempotency_key_v1(
    p_principal_id bigint, p_key text, p_fingerprint bytea, p_ttl_s int,
    OUT claimed boolean, OUT key_id bigint, OUT status int, OUT body text,
    OUT replayed boolean, OUT stored boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
BEGIN
    replayed := false;
    claimed := true;
    stored := false;
    IF p_key IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM idempotency_key k
     WHERE k.principal_id = p_principal_id AND k.key = p_key AND k.expires_at <= now();
    INSERT INTO idempotency_key (principal_id, key, fingerprint, expires_at)
    VALUES (p_principal_id, p_key, p_fingerprint, now() + make_interval(secs => p_ttl_s))
    ON CONFLICT (principal_id, key) DO NOTHING
    RETURNING id INTO key_id;
    stored := true;
    IF key_id IS NOT NULL THEN
        RETURN;
    END IF;

    claimed := false;
    SELECT k.fingerprint, k.response_status, k.response_body INTO v_fingerprint, status, body
      FROM idempotency_key k
     WHERE k.principal_id = p_principal_id AND k.key = p_key;
    IF v_fingerprint IS DISTINCT FROM p_fingerprint THEN
        stored := false;
        SELECT b.status, b.body INTO status, body FROM business_problem(
            'idempotency_key_reused', 'this key was used with a different request') b;
    ELSIF status IS NULL THEN
        stored := false;
        SELECT b.status, b.body INTO status, body FROM business_problem(
            'idempotency_key_in_use', 'a request with this key is still running') b;
    ELSE
        replayed := true;
    END IF;
END $$;

-- Move p_amount_minor from source to target. Both rows are locked in id order, so two opposite
-- transfers cannot deadlock, and FOR NO KEY UPDATE: a balance is not a key, so rows that only
-- reference the account (entries, transfers) are not held up. Writes both balances, the transfer
-- and its two ledger entries, or, when a rule fails, nothing, and names the problem instead.
-- Only funding accounts may go below zero (the CHECK on account says so too).
CREATE FUNCTION move_money_v1(
    p_source_id bigint, p_target_id bigint, p_amount_minor bigint, p_currency text,
    p_kind text, p_description text, p_reverses_id bigint, p_key_id bigint,
    OUT transfer_id bigint, OUT problem text, OUT detail text)
LANGUAGE plpgsql AS $$
DECLARE
    v_row record;
    v_source_balance bigint;
    v_source_kind text;
    v_source_after bigint;
    v_target_after bigint;
BEGIN
    IF p_source_id = p_target_id THEN
        problem := 'self_transfer';
        detail := 'the source and the recipient are the same account';
        RETURN;
    END IF;
    FOR v_row IN SELECT a.id, a.kind, a.currency, a.balance_minor FROM account a
                  WHERE a.id IN (p_source_id, p_target_id) ORDER BY a.id FOR NO KEY UPDATE LOOP
        IF v_row.currency <> p_currency THEN
            problem := 'currency_mismatch';
            detail := format('the %s account holds %s, not %s',
                             CASE WHEN v_row.id = p_source_id THEN 'source' ELSE 'recipient' END,
                             v_row.currency, p_currency);
        END IF;
        IF v_row.id = p_source_id THEN
            v_source_balance := v_row.balance_minor;
            v_source_kind := v_row.kind;
        END IF;
    END LOOP;
    IF problem IS NOT NULL THEN
        RETURN;
    END IF;
    IF v_source_kind = 'customer' AND v_source_balance < p_amount_minor THEN
        problem := 'insufficient_funds';
        detail := format('the account holds %s %s', money_text(v_source_balance,
                         (SELECT c.exponent FROM currency c WHERE c.code = p_currency)), p_currency);
        RETURN;
    END IF;

    UPDATE account a SET balance_minor = a.balance_minor - p_amount_minor
     WHERE a.id = p_source_id RETURNING a.balance_minor INTO v_source_after;
    UPDATE account a SET balance_minor = a.balance_minor + p_amount_minor
     WHERE a.id = p_target_id RETURNING a.balance_minor INTO v_target_after;
    INSERT INTO transfer (source_account_id, target_account_id, amount_minor, currency, kind,
                          description, reverses_id, idempotency_key_id)
    VALUES (p_source_id, p_target_id, p_amount_minor, p_currency, p_kind,
            p_description, p_reverses_id, p_key_id)
    RETURNING id INTO transfer_id;
    INSERT INTO ledger_entry (transfer_id, account_id, direction, amount_minor, balance_after_minor)
    VALUES (move_money_v1.transfer_id, p_source_id, 'debit', p_amount_minor, v_source_after),
           (move_money_v1.transfer_id, p_target_id, 'credit', p_amount_minor, v_target_after);
END $$;

-- A request's answer after move_money_v1: 201 with the new transaction and the users whose books
-- changed, or the problem move_money_v1 named. Recorded with the key (a no-op without one).
CREATE FUNCTION answer_money_v1(p_key_id bigint, p_transfer_id bigint, p_problem text,
                                p_detail text, OUT status int, OUT body text, OUT parties bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    parties := ARRAY[]::bigint[];
    IF p_problem IS NOT NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(p_problem, p_detail) b;
    ELSE
        status := 201;
        SELECT t.body::text, ARRAY[t.source_user_id, t.target_user_id] INTO body, parties
          FROM transfer_out t WHERE t.id = p_transfer_id;
    END IF;
    PERFORM finish_idempotency_key(p_key_id, status, body);
END $$;

-- The amount as minor units of a currency, or NULL when it has more decimals than the currency.
CREATE FUNCTION amount_minor_v1(p_amount text, p_currency text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN scale(p_amount::numeric) <= c.exponent
                THEN (p_amount::numeric * 10::numeric ^ c.exponent)::bigint END
      FROM currency c WHERE c.code = p_currency
$$;

-- Who pays whom, in what currency and how much: what a transfer and a payment both decide first.
-- The source is the caller's account named by p_from_number, or else the caller's account in
-- the currency, which defaults to the recipient's. p_amount is a plain decimal already checked at
-- the edge, but for its decimals when the currency was not named: too many for it is
-- invalid_amount, a validation error (detail says why), which the caller does not store.
-- Otherwise a problem names what is wrong, or the source and the target are found.
CREATE FUNCTION resolve_money_request_v1(
    p_user_id bigint, p_from_number text, p_to_number text, p_amount text, p_currency text,
    OUT source_id bigint, OUT source_number text, OUT source_currency text,
    OUT target_id bigint, OUT target_currency text, OUT currency text,
    OUT amount_minor bigint, OUT invalid_amount boolean, OUT problem text, OUT detail text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    invalid_amount := false;
    SELECT a.id, a.currency INTO target_id, target_currency FROM account a
     WHERE a.account_number = p_to_number AND a.kind = 'customer';
    IF target_id IS NULL THEN
        problem := 'unknown_account';
        detail := 'no such recipient account';
        RETURN;
    END IF;
    currency := coalesce(p_currency, target_currency);
    amount_minor := amount_minor_v1(p_amount, currency);
    IF amount_minor IS NULL THEN
        invalid_amount := true;
        detail := format('%s takes at most %s decimals', currency,
                         (SELECT c.exponent FROM currency c WHERE c.code = currency));
        RETURN;
    END IF;
    IF p_from_number IS NOT NULL THEN
        SELECT a.id, a.account_number, a.currency INTO source_id, source_number, source_currency
          FROM account a WHERE a.account_number = p_from_number AND a.user_id = p_user_id;
        IF source_id IS NULL THEN
            problem := 'unknown_account';
            detail := 'no such source account of yours';
        END IF;
    ELSE
        SELECT a.id, a.account_number, a.currency INTO source_id, source_number, source_currency
          FROM account a WHERE a.user_id = p_user_id AND a.currency = resolve_money_request_v1.currency;
        IF source_id IS NULL THEN
            problem := 'currency_mismatch';
            detail := format('you hold no %s account', currency);
        END IF;
    END IF;
END $$;

-- POST /transactions: the request resolved, then move_money_v1 checks the rest (same account,
-- currencies, funds) under the accounts' locks.
CREATE FUNCTION transfer_funds_v1(
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
    END IF;
END $$;

-- POST /transactions/{id}/reverse: the recipient (or an admin) sends the amount back. The sender
-- may not (403); anyone who is not a party is told it does not exist (404), also for a
-- transaction one side of which is a funding account, owned by nobody. A transfer is reversed
-- once: the original is locked first, so a second, concurrent reversal waits, and only then is
-- "already reversed" read, by a statement of its own that sees what the first committed.
CREATE FUNCTION reverse_transfer_v1(
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
        RETURN;
    END IF;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- POST /accounts: a further account, in another currency, opening at zero. The key is optional.
CREATE FUNCTION open_account_v1(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int, p_currency text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_account_id bigint;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    INSERT INTO account (user_id, currency) VALUES (p_user_id, p_currency)
    ON CONFLICT (user_id, currency) WHERE user_id IS NOT NULL DO NOTHING
    RETURNING id INTO v_account_id;
    IF v_account_id IS NULL THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('account_exists', format('you hold a %s account already', p_currency)) b;
    ELSE
        status := 201;
        parties := ARRAY[p_user_id];
        SELECT o.body::text INTO body FROM account_out o WHERE o.id = v_account_id;
    END IF;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
END $$;

-- POST /auth/register: the user, the first account, and its opening balance paid by the
-- currency's funding account through the ledger. NULL when the email is taken.
CREATE FUNCTION register_user_v1(
    p_email text, p_full_name text, p_password_hash text, p_currency text, p_opening_minor bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_account_id bigint;
    v_funding_id bigint;
    v_moved record;
BEGIN
    INSERT INTO app_user (email, full_name, password_hash)
    VALUES (p_email, p_full_name, p_password_hash)
    ON CONFLICT ((lower(email))) DO NOTHING
    RETURNING id INTO v_user_id;
    IF v_user_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO account (user_id, currency) VALUES (v_user_id, p_currency)
    RETURNING id INTO v_account_id;
    IF p_opening_minor > 0 THEN
        SELECT a.id INTO v_funding_id FROM account a WHERE a.kind = 'funding' AND a.currency = p_currency;
        SELECT * INTO v_moved FROM move_money_v1(v_funding_id, v_account_id, p_opening_minor,
                                                  p_currency, 'opening', 'Opening balance', NULL, NULL);
        ASSERT v_moved.problem IS NULL, 'a funding account pays any opening balance';
    END IF;
    RETURN (SELECT row_to_json(r)::text
              FROM (SELECT (SELECT row_to_json(u)
                              FROM (SELECT v_user_id AS id, p_email AS email,
                                           p_full_name AS full_name) u) AS "user",
                           (SELECT o.body FROM account_out o WHERE o.id = v_account_id) AS account) r);
END $$;

-- POST /admin/deposits: money that enters from outside, paid by the currency's funding account
-- into a customer's account, by an admin, audited in the same statement. Keyed like a transfer.
CREATE FUNCTION deposit_v1(
    p_admin_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_account_number text, p_amount text, p_reference text, p_ip text, p_request_id text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_target record;
    v_funding_id bigint;
    v_amount_minor bigint;
    v_moved record;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_admin_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM app_user u WHERE u.id = p_admin_id AND u.role = 'admin') THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('forbidden', 'only an admin may deposit') b;
        PERFORM finish_idempotency_key(v_claim.key_id, status, body);
        RETURN;
    END IF;
    SELECT a.id, a.currency INTO v_target FROM account a
     WHERE a.account_number = p_account_number AND a.kind = 'customer';
    IF v_target.id IS NULL THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('unknown_account', 'no such customer account') b;
        PERFORM finish_idempotency_key(v_claim.key_id, status, body);
        RETURN;
    END IF;
    v_amount_minor := amount_minor_v1(p_amount, v_target.currency);
    IF v_amount_minor IS NULL THEN
        DELETE FROM idempotency_key k WHERE k.id = v_claim.key_id;  -- refused, not run
        stored := false;
        status := 422;
        body := validation_problem_v1('amount', format('%s takes at most %s decimals',
            v_target.currency, (SELECT c.exponent FROM currency c WHERE c.code = v_target.currency)));
        RETURN;
    END IF;

    SELECT a.id INTO v_funding_id FROM account a
     WHERE a.kind = 'funding' AND a.currency = v_target.currency;
    SELECT * INTO v_moved FROM move_money_v1(v_funding_id, v_target.id, v_amount_minor,
                                              v_target.currency, 'deposit', p_reference, NULL,
                                              v_claim.key_id);
    ASSERT v_moved.problem IS NULL, 'a funding account pays any deposit';
    INSERT INTO audit_log (actor_id, action, target, ip, request_id, details)
    VALUES (p_admin_id, 'deposit.created', p_account_number, p_ip, p_request_id,
            jsonb_build_object('transaction_id', v_moved.transfer_id, 'amount', p_amount,
                               'currency', v_target.currency, 'reference', p_reference));
    SELECT a.status, a.body, a.parties INTO status, body, parties
      FROM answer_money_v1(v_claim.key_id, v_moved.transfer_id, NULL, NULL) a;
END $$;
