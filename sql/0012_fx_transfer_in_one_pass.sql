-- fx_transfer_v2: fx_transfer_v1's transfer, its four ledger entries written in one pass. v1 ran
-- move_money_v1 once per leg, so each FX transfer locked and read its accounts three times, looked
-- each clearing account up by a statement of its own, and wrote two UPDATEs of account and two
-- INSERTs of entries, and rendered its answer through transfer_out. v2 locks the customer accounts
-- once, writes both transfers, the four balances and the four entries by a statement each, and
-- renders the answer from what it already holds. The clearing rows' locks are taken last, once
-- everything that can refuse the transfer is decided and the answer is stored, and held for the
-- writes only.
--
-- Eight clearing accounts per currency. With one, every FX transfer between two currencies wrote
-- the same two rows, so all of them queued on those rows' locks, each holding them until its
-- commit was on disk: under load most FX transfers waited there (sampled: 4.5 of 6.5 busy
-- sessions), whatever their CPU cost. Each currency now clears through CLEARxxx and CLEARxxx1 to
-- CLEARxxx7, one position summed over the eight, and a transfer takes the pair its quote's id
-- names: concurrent transfers spread over eight pairs of rows, and each account still chains its
-- entries under its own lock. CLEARxxx keeps its number and its chain; the others start at zero.
-- fx_transfer_v1 takes whichever clearing account of the currency it finds first: books as
-- sound, one row of eight.
--
-- Same arguments, answers and books as v1: two transfers of kind 'fx' (sender -> clearing of
-- from_currency, then clearing of to_currency -> recipient), four entries that chain as any other
-- (their ids drawn under their accounts' locks), the quote USED, the key's answer stored, and
-- emit_event_v1 called as v1 calls it. v1 stays for the API processes of the release before.
--
-- No deadlock between v2 calls: each locks its customer accounts first (in id order), then the
-- clearing accounts (in id order), and nothing locks a customer account while holding a clearing
-- one. A v1 call (all four in id order) may deadlock with a v2 call while both releases run;
-- PostgreSQL breaks it, and the API runs a transaction that met a deadlock again.
ALTER TABLE account DROP CONSTRAINT account_account_number_check,
    ADD CONSTRAINT account_account_number_check
        CHECK (account_number ~ '^(AC[0-9A-F]{14}|FUND[A-Z]{3}|CLEAR[A-Z]{3}[1-7]?)$');
DROP INDEX account_clearing_currency_key;
INSERT INTO account (account_number, kind, currency)
SELECT 'CLEAR' || c.code || s, 'clearing', c.code FROM currency c, generate_series(1, 7) s;
-- A clearing account's number names its currency; what looks clearing accounts up by currency
-- (fx_transfer_v1, the positions) reads this index.
ALTER TABLE account ADD CONSTRAINT account_clearing_number_check
    CHECK (kind <> 'clearing' OR account_number ~ ('^CLEAR' || currency || '[1-7]?$'));
CREATE INDEX account_clearing_currency_idx ON account (currency) WHERE kind = 'clearing';

-- The clearing account of p_currency that the quote p_quote_id clears through. A currency added
-- later gets its eight clearing accounts in the migration that adds it.
CREATE FUNCTION fx_clearing_number_v1(p_currency text, p_quote_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'CLEAR' || p_currency || coalesce(nullif(p_quote_id % 8, 0)::text, '')
$$;

CREATE FUNCTION fx_transfer_v2(
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
    v_problem text;
    v_detail text;
    v_held record;     -- the source and the target, locked
    v_clearing record; -- the clearing accounts of both currencies, locked
    v_out bigint;      -- the leg sender -> clearing
    v_in bigint;       -- the leg clearing -> recipient
    v_entry bigint[];
    v_hash bytea[];
    v_balance bigint[];
    v_at timestamptz := now();
    v_when text := utc_text(now());
    v_from_amount text;
    v_to_amount text;
BEGIN
    SELECT * INTO v_claim FROM claim_idempotency_key_v1(p_user_id, p_key, p_fingerprint, p_key_ttl_s);
    SELECT v_claim.status, v_claim.body, v_claim.replayed, v_claim.stored, '{}'
      INTO status, body, replayed, stored, parties;
    IF NOT v_claim.claimed THEN
        RETURN;
    END IF;

    SELECT q.id, q.user_id, q.from_currency, q.to_currency, q.from_amount_minor,
           q.to_amount_minor, q.rate, q.status, q.expires_at <= now() AS expired,
           f.exponent AS from_exponent, t.exponent AS to_exponent
      INTO v_quote
      FROM fx_quote q JOIN currency f ON f.code = q.from_currency
      JOIN currency t ON t.code = q.to_currency
     WHERE q.id = p_quote_id FOR NO KEY UPDATE OF q;
    IF v_quote.id IS NOT NULL AND p_amount IS NOT NULL
       AND amount_minor_v1(p_amount, v_quote.from_currency) IS DISTINCT FROM v_quote.from_amount_minor
       AND v_quote.user_id = p_user_id THEN
        DELETE FROM idempotency_key k WHERE k.id = v_claim.key_id;  -- refused, not run
        stored := false;
        status := 422;
        body := validation_problem_v1('amount', 'must equal the quote''s from_amount, or be left out');
        RETURN;
    END IF;
    SELECT a.id, a.currency, a.user_id, a.account_number INTO v_target FROM account a
     WHERE a.account_number = p_to_number AND a.kind = 'customer';
    IF p_from_number IS NOT NULL THEN
        SELECT a.id, a.currency, a.account_number INTO v_source FROM account a
         WHERE a.account_number = p_from_number AND a.user_id = p_user_id;
    ELSE
        SELECT a.id, a.currency, a.account_number INTO v_source FROM account a
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

    -- The customer accounts (the source is the caller's, so never a funding account that may go
    -- below zero), in id order; their currencies differ, so they are two.
    SELECT max(l.balance_minor) FILTER (WHERE l.id = v_source.id) AS source_balance,
           (array_agg(l.ledger_head) FILTER (WHERE l.id = v_source.id))[1] AS source_head,
           max(l.balance_minor) FILTER (WHERE l.id = v_target.id) AS target_balance,
           (array_agg(l.ledger_head) FILTER (WHERE l.id = v_target.id))[1] AS target_head
      INTO v_held
      FROM (SELECT a.id, a.balance_minor, a.ledger_head FROM account a
             WHERE a.id IN (v_source.id, v_target.id) ORDER BY a.id FOR NO KEY UPDATE) l;
    IF v_held.source_balance < v_quote.from_amount_minor THEN
        -- insufficient funds: the quote stays ACTIVE
        SELECT a.status, a.body, a.parties INTO status, body, parties
          FROM answer_money_v1(v_claim.key_id, NULL, 'insufficient_funds',
                               format('the account holds %s %s',
                                      money_text(v_held.source_balance, v_quote.from_exponent),
                                      v_quote.from_currency)) a;
        RETURN;
    END IF;

    -- The answer, as transfer_out renders the sender's leg (the test of this function compares it
    -- with GET /transactions/{id}), stored with the key and sent as an event before the clearing
    -- accounts are locked: they are held for the writes only.
    v_out := nextval('transfer_id_seq');
    v_in := nextval('transfer_id_seq');
    v_from_amount := money_text(v_quote.from_amount_minor, v_quote.from_exponent);
    v_to_amount := money_text(v_quote.to_amount_minor, v_quote.to_exponent);
    status := 201;
    parties := ARRAY[p_user_id, v_target.user_id];
    SELECT row_to_json(r)::text INTO body
      FROM (SELECT v_out AS id, v_source.account_number AS from_account_number,
                   v_target.account_number AS to_account_number, v_from_amount AS amount,
                   v_quote.from_currency AS currency, 'COMPLETED'::text AS status,
                   'fx'::text AS kind, p_description AS description, NULL::bigint AS reverses,
                   v_when AS created_at, v_quote.rate::text AS fx_rate, v_quote.id AS fx_quote_id,
                   v_to_amount AS counter_amount, v_quote.to_currency AS counter_currency) r;
    PERFORM finish_idempotency_key(v_claim.key_id, status, body);
    PERFORM emit_event_v1('transaction.created', parties, body::json);

    -- The quote's clearing accounts, in id order. The legs as move_money_v1 writes them: sender ->
    -- clearing, then clearing -> recipient, each leg's debit entry before its credit entry.
    SELECT max(l.id) FILTER (WHERE l.currency = v_quote.from_currency) AS from_id,
           max(l.account_number) FILTER (WHERE l.currency = v_quote.from_currency) AS from_number,
           max(l.balance_minor) FILTER (WHERE l.currency = v_quote.from_currency) AS from_balance,
           (array_agg(l.ledger_head) FILTER (WHERE l.currency = v_quote.from_currency))[1] AS from_head,
           max(l.id) FILTER (WHERE l.currency = v_quote.to_currency) AS to_id,
           max(l.account_number) FILTER (WHERE l.currency = v_quote.to_currency) AS to_number,
           max(l.balance_minor) FILTER (WHERE l.currency = v_quote.to_currency) AS to_balance,
           (array_agg(l.ledger_head) FILTER (WHERE l.currency = v_quote.to_currency))[1] AS to_head
      INTO v_clearing
      FROM (SELECT a.id, a.currency, a.account_number, a.balance_minor, a.ledger_head
              FROM account a
             WHERE a.account_number IN (fx_clearing_number_v1(v_quote.from_currency, v_quote.id),
                                        fx_clearing_number_v1(v_quote.to_currency, v_quote.id))
             ORDER BY a.id FOR NO KEY UPDATE) l;
    ASSERT v_clearing.from_id IS NOT NULL AND v_clearing.to_id IS NOT NULL,
           'every currency has eight clearing accounts';
    v_entry := ARRAY[nextval('ledger_entry_id_seq'), nextval('ledger_entry_id_seq'),
                     nextval('ledger_entry_id_seq'), nextval('ledger_entry_id_seq')];
    v_balance := ARRAY[v_held.source_balance - v_quote.from_amount_minor,
                       v_clearing.from_balance + v_quote.from_amount_minor,
                       v_clearing.to_balance - v_quote.to_amount_minor,
                       v_held.target_balance + v_quote.to_amount_minor];
    v_hash := ARRAY[
        ledger_entry_hash(v_entry[1], v_out, v_source.account_number, 'debit', v_from_amount,
                          v_quote.from_currency, money_text(v_balance[1], v_quote.from_exponent),
                          v_when, v_held.source_head),
        ledger_entry_hash(v_entry[2], v_out, v_clearing.from_number, 'credit', v_from_amount,
                          v_quote.from_currency, money_text(v_balance[2], v_quote.from_exponent),
                          v_when, v_clearing.from_head),
        ledger_entry_hash(v_entry[3], v_in, v_clearing.to_number, 'debit', v_to_amount,
                          v_quote.to_currency, money_text(v_balance[3], v_quote.to_exponent),
                          v_when, v_clearing.to_head),
        ledger_entry_hash(v_entry[4], v_in, v_target.account_number, 'credit', v_to_amount,
                          v_quote.to_currency, money_text(v_balance[4], v_quote.to_exponent),
                          v_when, v_held.target_head)];

    INSERT INTO transfer (id, source_account_id, target_account_id, amount_minor, currency, kind,
                          description, idempotency_key_id, created_at)
    OVERRIDING SYSTEM VALUE
    VALUES (v_out, v_source.id, v_clearing.from_id, v_quote.from_amount_minor,
            v_quote.from_currency, 'fx', p_description, v_claim.key_id, v_at),
           (v_in, v_clearing.to_id, v_target.id, v_quote.to_amount_minor,
            v_quote.to_currency, 'fx', p_description, NULL, v_at);
    UPDATE account a SET balance_minor = m.balance, ledger_head = m.head
      FROM unnest(ARRAY[v_source.id, v_clearing.from_id, v_clearing.to_id, v_target.id],
                  v_balance, v_hash) AS m (id, balance, head)
     WHERE a.id = m.id;
    INSERT INTO ledger_entry (id, transfer_id, account_id, direction, amount_minor,
                              balance_after_minor, created_at, prev_hash, hash)
    OVERRIDING SYSTEM VALUE
    VALUES (v_entry[1], v_out, v_source.id, 'debit', v_quote.from_amount_minor, v_balance[1],
            v_at, v_held.source_head, v_hash[1]),
           (v_entry[2], v_out, v_clearing.from_id, 'credit', v_quote.from_amount_minor,
            v_balance[2], v_at, v_clearing.from_head, v_hash[2]),
           (v_entry[3], v_in, v_clearing.to_id, 'debit', v_quote.to_amount_minor, v_balance[3],
            v_at, v_clearing.to_head, v_hash[3]),
           (v_entry[4], v_in, v_target.id, 'credit', v_quote.to_amount_minor, v_balance[4],
            v_at, v_held.target_head, v_hash[4]);
    UPDATE fx_quote q
       SET status = 'USED', used_at = v_at, transfer_id = v_out, counter_transfer_id = v_in,
           source_account_id = v_source.id, target_account_id = v_target.id
     WHERE q.id = v_quote.id;
END $$;
