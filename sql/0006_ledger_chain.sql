-- Each account's ledger entries form a SHA-256 hash chain: an entry's hash covers its own fields
-- and prev_hash, the hash of the same account's previous entry. move_money_v1 extends it in the
-- statement that moves the money, under the account row lock it already takes, so two concurrent
-- transfers can never fork a chain, and the chain costs no round trip of its own.
--
-- THE HASH, for an auditor to recompute by hand. Take the entry as the API shows it
-- (GET /ledger/accounts/{account_number}/entries) and join these nine fields with '|', in
-- this order, as UTF-8 text:
--
--   id | transaction_id | account_number | direction | amount | currency | balance_after |
--   created_at | prev_hash
--
-- ids in decimal; amount and balance_after as the API writes them (the currency's minor digits,
-- a leading '-' for a negative balance); created_at as the API writes it (UTC, milliseconds,
-- '2026-11-21T10:30:00.123Z'); prev_hash in lower-case hex, or empty for an account's first
-- entry. The entry's hash is the lower-case hex SHA-256 of that text. In Python:
--
--   fields = [e["id"], e["transaction_id"], e["account_number"], e["direction"], e["amount"],
--             e["currency"], e["balance_after"], e["created_at"], e["prev_hash"] or ""]
--   assert hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest() == e["hash"]
--
-- Within an account, chain order is id order: the id is drawn under the account's lock.

-- Declared STABLE, as what they call is (concat_ws, convert_to, to_char): a SQL function whose
-- body is no more volatile than its declaration is inlined by the planner, so move_money_v1 pays
-- for the hash itself, not for running a function (an IMMUTABLE one calling STABLE ones is not
-- inlined, and costs a plan of its own in each transaction). utc_text of 0001 is made so too.
CREATE OR REPLACE FUNCTION utc_text(at timestamptz) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

CREATE FUNCTION ledger_entry_hash(
    p_id bigint, p_transfer_id bigint, p_account_number text, p_direction text, p_amount text,
    p_currency text, p_balance_after text, p_created_at text, p_prev_hash bytea) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to(concat_ws('|', p_id, p_transfer_id, p_account_number, p_direction,
                                       p_amount, p_currency, p_balance_after, p_created_at,
                                       coalesce(encode(p_prev_hash, 'hex'), '')), 'UTF8'))
$$;

ALTER TABLE ledger_entry ADD COLUMN prev_hash bytea CHECK (length(prev_hash) = 32),
                         ADD COLUMN hash bytea CHECK (length(hash) = 32);
-- The hash of the account's newest entry: where the next entry's prev_hash comes from, read from
-- the row the transfer locks anyway, and the check that the chain's tail was not cut off.
ALTER TABLE account ADD COLUMN ledger_head bytea CHECK (length(ledger_head) = 32);

-- The chains of the entries written before this migration, oldest first.
DO $$
DECLARE
    v_entry record;
    v_head bytea;
    v_account bigint;
BEGIN
    SET LOCAL payments.history_repair = 'on';
    FOR v_entry IN SELECT e.id, e.transfer_id, e.account_id, a.account_number, e.direction,
                          money_text(e.amount_minor, c.exponent) AS amount, a.currency,
                          money_text(e.balance_after_minor, c.exponent) AS balance_after,
                          utc_text(e.created_at) AS created_at
                     FROM ledger_entry e JOIN account a ON a.id = e.account_id
                     JOIN currency c ON c.code = a.currency
                    ORDER BY e.account_id, e.id LOOP
        IF v_account IS DISTINCT FROM v_entry.account_id THEN
            v_account := v_entry.account_id;
            v_head := NULL;
        END IF;
        UPDATE ledger_entry SET prev_hash = v_head,
               hash = ledger_entry_hash(v_entry.id, v_entry.transfer_id, v_entry.account_number,
                                        v_entry.direction, v_entry.amount, v_entry.currency,
                                        v_entry.balance_after, v_entry.created_at, v_head)
         WHERE id = v_entry.id RETURNING hash INTO v_head;
        UPDATE account SET ledger_head = v_head WHERE id = v_entry.account_id;
    END LOOP;
END $$;
ALTER TABLE ledger_entry ALTER COLUMN hash SET NOT NULL;

-- The functions of the release before the versioned ones (0002) wrote entries without a hash.
-- Every process now calls the _v1 functions, so they go.
DROP FUNCTION transfer_funds(bigint, text, bytea, int, text, text, text, text, text);
DROP FUNCTION reverse_transfer(bigint, boolean, text, bytea, int, bigint);
DROP FUNCTION open_account(bigint, text, bytea, int, text);
DROP FUNCTION register_user(text, text, text, text, bigint);
DROP FUNCTION money_answer(bigint, text, text);
DROP FUNCTION move_money(bigint, bigint, bigint, text, text, text, bigint, bigint);
DROP FUNCTION claim_idempotency_key(bigint, text, bytea, int);

-- move_money_v1 as in 0003, and now the chain: each entry's id is drawn and its hash computed
-- under the account's lock, from the head read with that lock; both balances and both heads are
-- written by one UPDATE.
CREATE OR REPLACE FUNCTION move_money_v1(
    p_source_id bigint, p_target_id bigint, p_amount_minor bigint, p_currency text,
    p_kind text, p_description text, p_reverses_id bigint, p_key_id bigint,
    OUT transfer_id bigint, OUT problem text, OUT detail text)
LANGUAGE plpgsql AS $$
DECLARE
    v_row record;
    v_source record;
    v_target record;
    v_exponent smallint;
    v_source_entry bigint;
    v_target_entry bigint;
    v_source_hash bytea;
    v_target_hash bytea;
    v_amount text;
    v_at timestamptz := now();
BEGIN
    IF p_source_id = p_target_id THEN
        problem := 'self_transfer';
        detail := 'the source and the recipient are the same account';
        RETURN;
    END IF;
    FOR v_row IN SELECT a.id, a.kind, a.currency, a.balance_minor, a.account_number,
                        a.ledger_head, c.exponent
                   FROM account a JOIN currency c ON c.code = a.currency
                  WHERE a.id IN (p_source_id, p_target_id) ORDER BY a.id FOR NO KEY UPDATE OF a LOOP
        IF v_row.currency <> p_currency THEN
            problem := 'currency_mismatch';
            detail := format('the %s account holds %s, not %s',
                             CASE WHEN v_row.id = p_source_id THEN 'source' ELSE 'recipient' END,
                             v_row.currency, p_currency);
        END IF;
        IF v_row.id = p_source_id THEN
            v_source := v_row;
        ELSE
            v_target := v_row;
        END IF;
        v_exponent := v_row.exponent;
    END LOOP;
    IF problem IS NOT NULL THEN
        RETURN;
    END IF;
    IF v_source.kind = 'customer' AND v_source.balance_minor < p_amount_minor THEN
        problem := 'insufficient_funds';
        detail := format('the account holds %s %s', money_text(v_source.balance_minor, v_exponent),
                         p_currency);
        RETURN;
    END IF;

    INSERT INTO transfer (source_account_id, target_account_id, amount_minor, currency, kind,
                          description, reverses_id, idempotency_key_id, created_at)
    VALUES (p_source_id, p_target_id, p_amount_minor, p_currency, p_kind,
            p_description, p_reverses_id, p_key_id, v_at)
    RETURNING id INTO transfer_id;
    v_source_entry := nextval('ledger_entry_id_seq');
    v_target_entry := nextval('ledger_entry_id_seq');
    v_amount := money_text(p_amount_minor, v_exponent);
    v_source_hash := ledger_entry_hash(
        v_source_entry, transfer_id, v_source.account_number, 'debit', v_amount, p_currency,
        money_text(v_source.balance_minor - p_amount_minor, v_exponent), utc_text(v_at),
        v_source.ledger_head);
    v_target_hash := ledger_entry_hash(
        v_target_entry, transfer_id, v_target.account_number, 'credit', v_amount, p_currency,
        money_text(v_target.balance_minor + p_amount_minor, v_exponent), utc_text(v_at),
        v_target.ledger_head);
    UPDATE account a
       SET balance_minor = a.balance_minor + CASE WHEN a.id = p_source_id THEN -p_amount_minor
                                                  ELSE p_amount_minor END,
           ledger_head = CASE WHEN a.id = p_source_id THEN v_source_hash ELSE v_target_hash END
     WHERE a.id IN (p_source_id, p_target_id);
    INSERT INTO ledger_entry (id, transfer_id, account_id, direction, amount_minor,
                              balance_after_minor, created_at, prev_hash, hash)
    OVERRIDING SYSTEM VALUE
    VALUES (v_source_entry, move_money_v1.transfer_id, p_source_id, 'debit', p_amount_minor,
            v_source.balance_minor - p_amount_minor, v_at, v_source.ledger_head, v_source_hash),
           (v_target_entry, move_money_v1.transfer_id, p_target_id, 'credit', p_amount_minor,
            v_target.balance_minor + p_amount_minor, v_at, v_target.ledger_head, v_target_hash);
END $$;

-- An entry as the API shows it. `hash` and `prev_hash` in hex.
CREATE VIEW ledger_entry_out AS
SELECT e.id, e.transfer_id, e.account_id, a.user_id,
       json_build_object('id', e.id, 'transaction_id', e.transfer_id,
                         'account_number', a.account_number, 'direction', e.direction,
                         'amount', money_text(e.amount_minor, c.exponent), 'currency', a.currency,
                         'balance_after', money_text(e.balance_after_minor, c.exponent),
                         'created_at', utc_text(e.created_at),
                         'hash', encode(e.hash, 'hex'), 'prev_hash', encode(e.prev_hash, 'hex'))
           AS body
  FROM ledger_entry e
  JOIN account a ON a.id = e.account_id
  JOIN currency c ON c.code = a.currency;

-- Walks one account's chain in one statement, in id order: the first entry whose stored fields no
-- longer give its hash, or whose prev_hash is not its predecessor's hash (an entry changed,
-- moved to another account, or deleted before it), and the account's head against the newest
-- entry's hash (entries cut off the end). Nothing is loaded into the caller.
CREATE FUNCTION ledger_chain_v1(p_account_id bigint,
                                OUT valid boolean, OUT entries bigint, OUT tampered_at bigint,
                                OUT detail text)
LANGUAGE sql STABLE AS $$
    WITH walked AS (
        SELECT e.id, e.hash,
               e.hash IS DISTINCT FROM ledger_entry_hash(
                   e.id, e.transfer_id, a.account_number, e.direction,
                   money_text(e.amount_minor, c.exponent), a.currency,
                   money_text(e.balance_after_minor, c.exponent), utc_text(e.created_at),
                   e.prev_hash) AS changed,
               e.prev_hash IS DISTINCT FROM lag(e.hash) OVER (ORDER BY e.id) AS unlinked
          FROM ledger_entry e
          JOIN account a ON a.id = e.account_id
          JOIN currency c ON c.code = a.currency
         WHERE e.account_id = p_account_id
    ), summary AS (
        SELECT count(*) AS entries,
               min(id) FILTER (WHERE changed) AS first_changed,
               min(id) FILTER (WHERE unlinked AND NOT changed) AS first_unlinked,
               max(id) AS newest_id
          FROM walked
    )
    SELECT tampered IS NULL AND head_ok, s.entries,
           coalesce(tampered, CASE WHEN NOT head_ok THEN s.newest_id END),
           CASE WHEN tampered = s.first_changed
                    THEN 'the entry''s fields no longer give its hash'
                WHEN tampered IS NOT NULL
                    THEN 'the entry''s prev_hash is not the hash of the entry before it'
                WHEN NOT head_ok
                    THEN 'the account''s newest entry is not the last one of the chain' END
      FROM summary s, account a,
           LATERAL (SELECT least(s.first_changed, s.first_unlinked) AS tampered,
                           a.ledger_head IS NOT DISTINCT FROM
                               (SELECT e.hash FROM ledger_entry e
                                 WHERE e.id = s.newest_id) AS head_ok) x
     WHERE a.id = p_account_id
$$;

-- What reconciliation finds wrong in the books between p_from and p_to, for one account, or for
-- every account when p_account_id is NULL (the periodic check). Each row names its kind and the
-- ids involved:
--   missing_entry           a transfer without its debit entry on the source account, or its
--                           credit entry on the target account
--   unbalanced_transaction  a transfer whose debits and credits differ
--   amount_mismatch         an entry whose amount is not its transfer's
--   balance_mismatch        an entry whose balance_after is not the one before it plus or minus its
--                           amount; for one account, also its balance against the sum of all its
--                           entries
--   payment_without_transaction  a settled payment whose transaction is missing, or moves
--                           another amount or between other accounts
--   chain_break             an entry whose fields no longer give its hash, or whose prev_hash is
--                           not the hash of the account's entry before it
-- An entry's predecessor may lie before p_from: it is looked up for the first entry of each account.
CREATE FUNCTION book_discrepancies_v1(p_account_id bigint, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (kind text, transaction_id bigint, entry_id bigint, payment_id bigint, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_transfers bigint[];
BEGIN
    IF p_account_id IS NULL THEN
        v_transfers := ARRAY(SELECT t.id FROM transfer t
                              WHERE t.created_at >= p_from AND t.created_at < p_to);
    ELSE
        v_transfers := ARRAY(SELECT t.id FROM transfer t
                              WHERE t.source_account_id = p_account_id
                                AND t.created_at >= p_from AND t.created_at < p_to
                              UNION
                             SELECT t.id FROM transfer t
                              WHERE t.target_account_id = p_account_id
                                AND t.created_at >= p_from AND t.created_at < p_to);
    END IF;

    RETURN QUERY
    SELECT 'missing_entry', t.id, NULL::bigint, NULL::bigint,
           format('no %s entry on account %s', side.direction, a.account_number)
      FROM transfer t
     CROSS JOIN LATERAL (VALUES ('debit', t.source_account_id), ('credit', t.target_account_id))
           AS side (direction, account_id)
      JOIN account a ON a.id = side.account_id
     WHERE t.id = ANY (v_transfers)
       AND NOT EXISTS (SELECT 1 FROM ledger_entry e
                        WHERE e.transfer_id = t.id AND e.direction = side.direction
                          AND e.account_id = side.account_id);

    RETURN QUERY
    SELECT 'unbalanced_transaction', e.transfer_id, NULL::bigint, NULL::bigint,
           format('debits %s, credits %s (minor units)',
                  sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'),
                  sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'))
      FROM ledger_entry e
     WHERE e.transfer_id = ANY (v_transfers)
     GROUP BY e.transfer_id
    HAVING coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'), 0)
        <> coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'), 0);

    RETURN QUERY
    SELECT 'amount_mismatch', t.id, e.id, NULL::bigint,
           format('the entry holds %s, the transfer %s (minor units)', e.amount_minor, t.amount_minor)
      FROM ledger_entry e JOIN transfer t ON t.id = e.transfer_id
     WHERE e.transfer_id = ANY (v_transfers) AND e.amount_minor <> t.amount_minor;

    RETURN QUERY
    WITH entries AS (
        SELECT e.*, row_number() OVER w = 1 AS first_in_range,
               lag(e.hash) OVER w AS before_hash,
               lag(e.balance_after_minor) OVER w AS before_balance
          FROM ledger_entry e
         WHERE (p_account_id IS NULL OR e.account_id = p_account_id)
           AND e.created_at >= p_from AND e.created_at < p_to
        WINDOW w AS (PARTITION BY e.account_id ORDER BY e.id)
    ), linked AS (
        SELECT e.*, p.hash AS prev_entry_hash, p.balance_after_minor AS prev_balance
          FROM entries e
          LEFT JOIN LATERAL (SELECT CASE WHEN e.first_in_range THEN b.hash ELSE e.before_hash END,
                                    CASE WHEN e.first_in_range THEN coalesce(b.balance_after_minor, 0)
                                         ELSE e.before_balance END
                               FROM (SELECT NULL) one
                               LEFT JOIN LATERAL (SELECT x.hash, x.balance_after_minor
                                                    FROM ledger_entry x
                                                   WHERE e.first_in_range
                                                     AND x.account_id = e.account_id AND x.id < e.id
                                                   ORDER BY x.id DESC LIMIT 1) b ON true)
                    AS p (hash, balance_after_minor) ON true
    )
    SELECT f.kind, l.transfer_id, l.id, NULL::bigint, f.detail
      FROM linked l
      JOIN account a ON a.id = l.account_id
      JOIN currency c ON c.code = a.currency
     CROSS JOIN LATERAL (VALUES
         ('balance_mismatch', l.balance_after_minor <> l.prev_balance
              + CASE l.direction WHEN 'credit' THEN l.amount_minor ELSE -l.amount_minor END,
          format('balance_after %s after %s (minor units)', l.balance_after_minor, l.prev_balance)),
         ('chain_break', l.hash IS DISTINCT FROM ledger_entry_hash(
              l.id, l.transfer_id, a.account_number, l.direction,
              money_text(l.amount_minor, c.exponent), a.currency,
              money_text(l.balance_after_minor, c.exponent), utc_text(l.created_at), l.prev_hash),
          'the entry''s fields no longer give its hash'),
         ('chain_break', l.prev_hash IS DISTINCT FROM l.prev_entry_hash,
          'the entry''s prev_hash is not the hash of the entry before it'))
           AS f (kind, found, detail)
     WHERE f.found;

    IF p_account_id IS NOT NULL THEN
        RETURN QUERY
        SELECT 'balance_mismatch', NULL::bigint, NULL::bigint, NULL::bigint,
               format('the balance is %s, its entries sum to %s (minor units)', a.balance_minor, s.total)
          FROM account a,
               LATERAL (SELECT coalesce(sum(CASE e.direction WHEN 'credit' THEN e.amount_minor
                                                             ELSE -e.amount_minor END), 0) AS total
                          FROM ledger_entry e WHERE e.account_id = a.id) s
         WHERE a.id = p_account_id AND a.balance_minor <> s.total;
    END IF;

    RETURN QUERY
    SELECT 'payment_without_transaction', p.transfer_id, NULL::bigint, p.id,
           CASE WHEN t.id IS NULL THEN 'the settled payment has no transaction'
                ELSE format('transaction %s is not this payment''s money', t.id) END
      FROM payment p
      LEFT JOIN transfer t ON t.id = p.transfer_id
     WHERE p.status = 'SUCCEEDED' AND p.settled_at >= p_from AND p.settled_at < p_to
       AND (p_account_id IS NULL OR p_account_id IN (p.source_account_id, p.target_account_id))
       AND (t.id IS NULL OR t.amount_minor <> p.amount_minor
            OR t.source_account_id <> p.source_account_id
            OR t.target_account_id <> p.target_account_id);
END $$;

-- POST /accounts/{account_number}/reconcile: the account's books over whole UTC days, from
-- p_start to p_end inclusive, as the response's JSON.
CREATE FUNCTION reconcile_account_v1(p_account_id bigint, p_start date, p_end date) RETURNS text
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT (p_start::timestamp AT TIME ZONE 'UTC') AS from_at,
               ((p_end + 1)::timestamp AT TIME ZONE 'UTC') AS to_at
    ), found AS (
        SELECT d.* FROM bounds b, book_discrepancies_v1(p_account_id, b.from_at, b.to_at) d
    ), counted AS (
        SELECT count(*) AS entries, count(DISTINCT e.transfer_id) AS transactions
          FROM ledger_entry e, bounds b
         WHERE e.account_id = p_account_id AND e.created_at >= b.from_at AND e.created_at < b.to_at
    )
    SELECT json_build_object(
        'account_number', a.account_number, 'currency', a.currency,
        'start_date', p_start, 'end_date', p_end,
        'opening_balance', money_text(coalesce((
            SELECT e.balance_after_minor FROM ledger_entry e, bounds b
             WHERE e.account_id = a.id AND e.created_at < b.from_at
             ORDER BY e.id DESC LIMIT 1), 0), c.exponent),
        'closing_balance', money_text(coalesce((
            SELECT e.balance_after_minor FROM ledger_entry e, bounds b
             WHERE e.account_id = a.id AND e.created_at < b.to_at
             ORDER BY e.id DESC LIMIT 1), 0), c.exponent),
        'entry_count', n.entries, 'transaction_count', n.transactions,
        'balanced', NOT EXISTS (SELECT 1 FROM found),
        'discrepancies', coalesce((SELECT json_agg(json_build_object(
                'kind', f.kind, 'transaction_id', f.transaction_id, 'entry_id', f.entry_id,
                'payment_id', f.payment_id, 'detail', f.detail)
              ORDER BY f.kind, f.transaction_id, f.entry_id, f.payment_id) FROM found f), '[]'))::text
      FROM account a JOIN currency c ON c.code = a.currency, counted n
     WHERE a.id = p_account_id
$$;
