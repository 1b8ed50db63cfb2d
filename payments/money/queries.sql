-- Accounts, transfers and the ledger: the queries of payments/money, loaded into
-- payments.platform.db.Q. Money moves only through the versioned functions of sql/ (the _v1 ones of
-- 0003): an API of the next release may call their successors against the same database.

-- A money function's answer, and what its metrics need from the body (read here, in C, rather
-- than by parsing the JSON again in Python): the amount and currency moved, or the problem code.
-- name: transfer_funds
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM transfer_funds_v1($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: reverse_transfer
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM reverse_transfer_v2($1, $2, $3, $4, $5, $6, $7, $8);

-- name: deposit
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM deposit_v1($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: open_account
SELECT status, body, replayed, stored, parties FROM open_account_v1($1, $2, $3, $4, $5);

-- name: first_account_body
SELECT o.body::text FROM account_out o WHERE o.user_id = $1 ORDER BY o.id LIMIT 1;

-- name: accounts_of_user
SELECT o.body::text FROM account_out o WHERE o.user_id = $1 ORDER BY o.id LIMIT $2;

-- name: account_of_user
SELECT o.body::text
  FROM account_out o JOIN account a ON a.id = o.id
 WHERE a.account_number = $1 AND o.user_id = $2;

-- name: transfers_of_user
-- Newest first, keyset on id; both directions, through the two (account, id) indexes, each
-- read no further than one page.
SELECT t.id, t.body::text
  FROM transfer_out t
 WHERE t.id IN ((SELECT x.id FROM transfer x
                   JOIN account a ON a.id = x.source_account_id
                  WHERE a.user_id = $1 AND x.id < $2 ORDER BY x.id DESC LIMIT $3)
                 UNION ALL
                (SELECT x.id FROM transfer x
                   JOIN account a ON a.id = x.target_account_id
                  WHERE a.user_id = $1 AND x.id < $2 ORDER BY x.id DESC LIMIT $3))
 ORDER BY t.id DESC
 LIMIT $3;

-- name: transfer_of_user
SELECT t.body::text FROM transfer_out t
 WHERE t.id = $1 AND (t.source_user_id = $2 OR t.target_user_id = $2);

-- name: ledger_imbalances
-- Currencies whose entries do not sum to zero, and accounts whose balance is not the sum of their
-- entries. Both lists are empty while the books balance.
SELECT 'currency' AS scope, a.currency AS name,
       sum(CASE e.direction WHEN 'credit' THEN e.amount_minor ELSE -e.amount_minor END) AS difference
  FROM ledger_entry e JOIN account a ON a.id = e.account_id
 GROUP BY a.currency
HAVING sum(CASE e.direction WHEN 'credit' THEN e.amount_minor ELSE -e.amount_minor END) <> 0
 UNION ALL
SELECT 'account', a.account_number,
       a.balance_minor - coalesce(sum(CASE e.direction WHEN 'credit' THEN e.amount_minor
                                                        ELSE -e.amount_minor END), 0)
  FROM account a LEFT JOIN ledger_entry e ON e.account_id = a.id
 GROUP BY a.id
HAVING a.balance_minor <> coalesce(sum(CASE e.direction WHEN 'credit' THEN e.amount_minor
                                                        ELSE -e.amount_minor END), 0);


-- name: recent_book_discrepancies
-- What reconciliation would find in every account's books of the last $1 seconds.
SELECT kind, transaction_id, entry_id, payment_id
  FROM book_discrepancies_v1(NULL, now() - make_interval(secs => $1), now() + interval '1 minute');

-- name: ledger_account
-- The id of an account named by number: the caller's own ($2), or any one when $3.
SELECT a.id FROM account a WHERE a.account_number = $1 AND ($3 OR a.user_id = $2);

-- name: ledger_entries_of_account
-- Newest first, keyset on id, through the (account_id, id) index.
SELECT o.id, o.body::text FROM ledger_entry_out o
 WHERE o.account_id = $1 AND o.id < $2
 ORDER BY o.id DESC
 LIMIT $3;

-- name: ledger_transaction_entries
-- The entries of a transfer whose source or target belongs to $2 (any transfer when $3). The
-- other party's entry goes without balance_after and the hashes: they would disclose its balance.
SELECT CASE WHEN $3 OR o.user_id = $2 THEN o.body::text
            ELSE (o.body::jsonb || '{"balance_after": null, "hash": null, "prev_hash": null}')::text
       END AS body
  FROM ledger_entry_out o
 WHERE o.transfer_id = $1
   AND EXISTS (SELECT 1 FROM transfer_out t
                WHERE t.id = $1 AND ($3 OR $2 IN (t.source_user_id, t.target_user_id)))
 ORDER BY o.id;

-- name: ledger_verify_transaction
-- Whether a transfer's debits equal its credits in each currency, with the sums; NULL when the
-- transfer is not one $2 is a party to (any transfer when $3). A transfer without entries, or
-- with one side missing, is not balanced.
SELECT json_build_object(
           'transaction_id', t.id,
           'balanced', coalesce(bool_and(s.debits = s.credits), false),
           'currencies', coalesce(json_agg(json_build_object(
               'currency', s.currency, 'debits', money_text(s.debits, c.exponent),
               'credits', money_text(s.credits, c.exponent)) ORDER BY s.currency)
               FILTER (WHERE s.currency IS NOT NULL), '[]'))::text
  FROM transfer_out t
  LEFT JOIN LATERAL (
      SELECT a.currency,
             coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'), 0)::bigint AS debits,
             coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'), 0)::bigint AS credits
        FROM ledger_entry e JOIN account a ON a.id = e.account_id
       WHERE e.transfer_id = t.id
       GROUP BY a.currency) s ON true
  LEFT JOIN currency c ON c.code = s.currency
 WHERE t.id = $1 AND ($3 OR $2 IN (t.source_user_id, t.target_user_id))
 GROUP BY t.id;

-- name: ledger_chain
SELECT valid, entries, tampered_at, detail FROM ledger_chain_v1($1);

-- name: reconcile_account
SELECT reconcile_account_v1($1, $2, $3);
