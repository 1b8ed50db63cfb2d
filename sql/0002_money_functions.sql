-- Money moves only through these functions. Each request that moves money is one call: it claims
-- the idempotency key, locks, checks, writes and records its answer in one statement, so the
-- answer commits with the money and the request costs one round trip to PostgreSQL.

-- The business problems a function may answer with; titles agree with payments/errors.py (a test
-- compares them).
CREATE FUNCTION business_problem(p_code text, p_detail text, OUT status int, OUT body text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p.status, problem_text(p.status, p.code, p.title, p_detail)
      FROM (VALUES ('insufficient_funds', 422, 'Insufficient funds'),
                   ('self_transfer', 422, 'Cannot transfer to the same account'),
                   ('currency_mismatch', 422, 'Currency mismatch'),
                   ('unknown_account', 422, 'Unknown account'),
                   ('idempotency_key_reused', 422, 'Idempotency-Key reused with a different request'),
                   ('idempotency_key_in_use', 409, 'Request still in progress'),
                   ('account_exists', 409, 'Account already exists'),
                   ('already_reversed', 409, 'Transaction already reversed'),
                   ('not_reversible', 409, 'Transaction cannot be reversed'),
                   ('forbidden', 403, 'Forbidden'),
                   ('not_found', 404, 'Not found')) AS p (code, status, title)
     WHERE p.code = p_code
$$;

-- Claim (principal, key) for a new request, or give back what the earlier request with that key
-- answered. A fresh claim returns its key_id. A key past its retention is deleted and claimed
-- anew. A concurrent claim of the same key waits on the unique index until the first commits,
-- then replays its answer: that is the fallback when Redis, and its in-flight marker, are gone.
CREATE FUNCTION claim_idempotency_key(
    p_principal_id bigint, p_key text, p_fingerprint bytea, p_ttl_s int,
    OUT key_id bigint, OUT status int, OUT body text, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
BEGIN
    replayed := false;
    DELETE FROM idempotency_key k
     WHERE k.principal_id = p_principal_id AND k.key = p_key AND k.expires_at <= now();
    INSERT INTO idempotency_key (principal_id, key, fingerprint, expires_at)
    VALUES (p_principal_id, p_key, p_fingerprint, now() + make_interval(secs => p_ttl_s))
    ON CONFLICT (principal_id, key) DO NOTHING
    RETURNING id INTO key_id;
    IF key_id IS NOT NULL THEN
        RETURN;
    END IF;

    SELECT k.fingerprint, k.response_status, k.response_body INTO v_fingerprint, status, body
      FROM idempotency_key k
     WHERE k.principal_id = p_principal_id AND k.key = p_key;
    IF v_fingerprint IS DISTINCT FROM p_fingerprint THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(
            'idempotency_key_reused', 'this key was used with a different request') b;
    ELSIF status IS NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(
            'idempotency_key_in_use', 'a request with this key is still running') b;
    ELSE
        replayed := true;
    END IF;
END $$;

-- Record the answer of a claimed key (nothing to do when the request came without a key).
CREATE FUNCTION finish_idempotency_key(p_key_id bigint, p_status int, p_body text) RETURNS void
LANGUAGE sql AS $$
    UPDATE idempotency_key SET response_status = p_status, response_body = p_body
     WHERE id = p_key_id
$$;

-- Move p_amount_minor from source to target. Both rows are locked in id order, so two opposite
-- transfers cannot deadlock. Writes both balances, the transfer and its two ledger entries, or,
-- when a rule fails, nothing, and names the problem instead. Only funding accounts may go below
-- zero (the CHECK on account says so too).
CREATE FUNCTION move_money(
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
                  WHERE a.id IN (p_source_id, p_target_id) ORDER BY a.id FOR UPDATE LOOP
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
    VALUES (move_money.transfer_id, p_source_id, 'debit', p_amount_minor, v_source_after),
           (move_money.transfer_id, p_target_id, 'credit', p_amount_minor, v_target_after);
END $$;

-- The answer to a request that called move_money: 201 with the new transaction and the users
-- whose books changed, or the problem move_money named.
CREATE FUNCTION money_answer(p_transfer_id bigint, p_problem text, p_detail text,
                             OUT status int, OUT body text, OUT parties bigint[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    parties := ARRAY[]::bigint[];
    IF p_problem IS NOT NULL THEN
        SELECT b.status, b.body INTO status, body FROM business_problem(p_problem, p_detail) b;
    ELSE
        status := 201;
        SELECT t.body::text, ARRAY[t.source_user_id, t.target_user_id] INTO body, parties
          FROM transfer_out t WHERE t.id = p_transfer_id;
    END IF;
END $$;

-- POST /transactions. The source is the caller's account named by p_from_number, or else the
-- caller's account in the transfer's currency (which defaults to the recipient's). p_amount is a
-- plain decimal already checked at the edge, but for its decimals when the currency was not named:
-- too many for the recipient's currency is a validation error, which is not stored with the key.
CREATE FUNCTION transfer_funds(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_from_number text, p_to_number text, p_amount text, p_currency text,
    p_description text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_key_id bigint;
    v_target record;
    v_source_id bigint;
    v_currency text;
    v_exponent smallint;
    v_moved record;
BEGIN
    -- A replayed answer was stored; so is the answer of a fresh claim, unless refused below.
    SELECT c.key_id, c.status, c.body, c.replayed, c.replayed OR c.key_id IS NOT NULL, '{}'
      INTO v_key_id, status, body, replayed, stored, parties
      FROM claim_idempotency_key(p_user_id, p_key, p_fingerprint, p_key_ttl_s) c;
    IF v_key_id IS NULL THEN
        RETURN;
    END IF;

    SELECT a.id, a.currency INTO v_target FROM account a
     WHERE a.account_number = p_to_number AND a.kind = 'customer';
    IF v_target.id IS NULL THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('unknown_account', 'no such recipient account') b;
    ELSE
        v_currency := coalesce(p_currency, v_target.currency);
        v_exponent := (SELECT c.exponent FROM currency c WHERE c.code = v_currency);
        IF scale(p_amount::numeric) > v_exponent THEN
            DELETE FROM idempotency_key k WHERE k.id = v_key_id;  -- refused, not run
            stored := false;
            status := 422;
            body := json_build_object(
                'type', '/problems/validation_error', 'title', 'Validation failed', 'status', 422,
                'code', 'validation_error',
                'detail', format('amount: %s takes at most %s decimals', v_currency, v_exponent),
                'errors', json_build_array(json_build_object(
                    'field', 'amount',
                    'message', format('%s takes at most %s decimals', v_currency, v_exponent))))::text;
            RETURN;
        END IF;
        IF p_from_number IS NOT NULL THEN
            SELECT a.id INTO v_source_id FROM account a
             WHERE a.account_number = p_from_number AND a.user_id = p_user_id;
            IF v_source_id IS NULL THEN
                SELECT b.status, b.body INTO status, body
                  FROM business_problem('unknown_account', 'no such source account of yours') b;
            END IF;
        ELSE
            SELECT a.id INTO v_source_id FROM account a
             WHERE a.user_id = p_user_id AND a.currency = v_currency;
            IF v_source_id IS NULL THEN
                SELECT b.status, b.body INTO status, body
                  FROM business_problem('currency_mismatch',
                                        format('you hold no %s account', v_currency)) b;
            END IF;
        END IF;
    END IF;

    IF status IS NULL THEN
        SELECT * INTO v_moved FROM move_money(v_source_id, v_target.id,
                                               (p_amount::numeric * 10::numeric ^ v_exponent)::bigint,
                                               v_currency,
                                               'transfer', p_description, NULL, v_key_id);
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM money_answer(v_moved.transfer_id, v_moved.problem, v_moved.detail) a;
    END IF;
    PERFORM finish_idempotency_key(v_key_id, status, body);
END $$;

-- POST /transactions/{id}/reverse: the recipient (or an admin) sends the amount back. The sender
-- may not (403); anyone else is told it does not exist (404). A transfer is reversed once.
CREATE FUNCTION reverse_transfer(
    p_user_id bigint, p_is_admin boolean, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_transfer_id bigint,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_key_id bigint;
    v_original record;
    v_moved record;
BEGIN
    -- A replayed answer was stored; so is the answer of a fresh claim, unless refused below.
    SELECT c.key_id, c.status, c.body, c.replayed, c.replayed OR c.key_id IS NOT NULL, '{}'
      INTO v_key_id, status, body, replayed, stored, parties
      FROM claim_idempotency_key(p_user_id, p_key, p_fingerprint, p_key_ttl_s) c;
    IF v_key_id IS NULL THEN
        RETURN;
    END IF;

    -- Locking the original makes a second, concurrent reversal wait, then see the first.
    SELECT t.id, t.kind, t.amount_minor, t.currency, t.source_account_id, t.target_account_id,
           s.user_id AS source_user_id, d.user_id AS target_user_id,
           EXISTS (SELECT 1 FROM transfer r WHERE r.reverses_id = t.id) AS reversed
      INTO v_original
      FROM transfer t
      JOIN account s ON s.id = t.source_account_id
      JOIN account d ON d.id = t.target_account_id
     WHERE t.id = p_transfer_id
       FOR UPDATE OF t;
    IF v_original.id IS NULL
       OR NOT (p_is_admin OR p_user_id IN (v_original.source_user_id, v_original.target_user_id)) THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('not_found', 'no such transaction') b;
    ELSIF NOT p_is_admin AND p_user_id <> v_original.target_user_id THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('forbidden', 'only the recipient may reverse a transfer') b;
    ELSIF v_original.kind <> 'transfer' THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('not_reversible', format('a %s cannot be reversed', v_original.kind)) b;
    ELSIF v_original.reversed THEN
        SELECT b.status, b.body INTO status, body
          FROM business_problem('already_reversed', 'this transfer was reversed already') b;
    ELSE
        SELECT * INTO v_moved FROM move_money(
            v_original.target_account_id, v_original.source_account_id, v_original.amount_minor,
            v_original.currency, 'reversal', format('Reversal of transaction %s', v_original.id),
            v_original.id, v_key_id);
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM money_answer(v_moved.transfer_id, v_moved.problem, v_moved.detail) a;
    END IF;
    PERFORM finish_idempotency_key(v_key_id, status, body);
END $$;

-- POST /accounts: a further account, in another currency, opening at zero. The key is optional.
CREATE FUNCTION open_account(
    p_user_id bigint, p_key text, p_fingerprint bytea, p_key_ttl_s int, p_currency text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_key_id bigint;
    v_account_id bigint;
BEGIN
    replayed := false;
    stored := false;
    parties := '{}';
    IF p_key IS NOT NULL THEN
        SELECT c.key_id, c.status, c.body, c.replayed, c.replayed OR c.key_id IS NOT NULL
          INTO v_key_id, status, body, replayed, stored
          FROM claim_idempotency_key(p_user_id, p_key, p_fingerprint, p_key_ttl_s) c;
        IF v_key_id IS NULL THEN
            RETURN;
        END IF;
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
    PERFORM finish_idempotency_key(v_key_id, status, body);
END $$;

-- POST /auth/register: the user, the first account, and its opening balance paid by the
-- currency's funding account through the ledger. NULL when the email is taken.
CREATE FUNCTION register_user(
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
        SELECT * INTO v_moved FROM move_money(v_funding_id, v_account_id, p_opening_minor, p_currency,
                                               'opening', 'Opening balance', NULL, NULL);
        ASSERT v_moved.problem IS NULL, 'a funding account pays any opening balance';
    END IF;
    RETURN json_build_object(
        'user', json_build_object('id', v_user_id, 'email', p_email, 'full_name', p_full_name),
        'account', (SELECT o.body FROM account_out o WHERE o.id = v_account_id))::text;
END $$;
