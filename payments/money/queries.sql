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

