-- Every application query, as "-- name: x" blocks, loaded once into payments.db.Q.
-- Money moves only through the functions of sql/0002_money_functions.sql.

-- A money function's answer, and what its metrics need from the body (read here, in C, rather
-- than by parsing the JSON again in Python): the amount and currency moved, or the problem code.
-- name: transfer_funds
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM transfer_funds($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: reverse_transfer
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM reverse_transfer($1, $2, $3, $4, $5, $6);

-- name: open_account
SELECT status, body, replayed, stored, parties FROM open_account($1, $2, $3, $4, $5);

-- name: register_user
SELECT register_user($1, $2, $3, $4, $5);

-- name: user_by_email
SELECT u.id, u.email, u.full_name, u.password_hash, u.role
  FROM app_user u WHERE lower(u.email) = lower($1);

-- name: user_by_id
SELECT u.id, u.email, u.full_name, u.role FROM app_user u WHERE u.id = $1;

-- name: rehash_password
UPDATE app_user SET password_hash = $2 WHERE id = $1;

-- name: first_account_body
SELECT o.body::text FROM account_out o WHERE o.user_id = $1 ORDER BY o.id LIMIT 1;

-- name: accounts_of_user
SELECT o.body::text FROM account_out o WHERE o.user_id = $1 ORDER BY o.id LIMIT $2;

-- name: account_of_user
SELECT o.body::text
  FROM account_out o JOIN account a ON a.id = o.id
 WHERE a.account_number = $1 AND o.user_id = $2;

-- name: transfers_of_user
-- Newest first, keyset on id; both directions, through the two (account, id) indexes.
SELECT t.id, t.body::text
  FROM transfer_out t
 WHERE t.id IN (SELECT x.id FROM transfer x
                  JOIN account a ON a.id = x.source_account_id
                 WHERE a.user_id = $1 AND x.id < $2
                 UNION ALL
                SELECT x.id FROM transfer x
                  JOIN account a ON a.id = x.target_account_id
                 WHERE a.user_id = $1 AND x.id < $2)
 ORDER BY t.id DESC
 LIMIT $3;

-- name: transfer_of_user
SELECT t.body::text FROM transfer_out t
 WHERE t.id = $1 AND (t.source_user_id = $2 OR t.target_user_id = $2);

-- name: start_token_family
INSERT INTO token_family (id, user_id) VALUES ($1, $2);

-- name: insert_refresh_token
INSERT INTO refresh_token (family_id, parent_id, token_hash, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4));

-- name: lock_refresh_token
-- The presented refresh token with its family and user, locked so it is used once.
SELECT r.id, r.family_id, r.expires_at <= now() AS expired, r.used_at IS NOT NULL AS used,
       f.revoked_at IS NOT NULL AS revoked, f.user_id
  FROM refresh_token r JOIN token_family f ON f.id = r.family_id
 WHERE r.token_hash = $1
   FOR UPDATE OF r;

-- name: use_refresh_token
UPDATE refresh_token SET used_at = now() WHERE id = $1;

-- name: revoke_token_family
UPDATE token_family SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1;

-- name: token_family_revoked
SELECT revoked_at IS NOT NULL FROM token_family WHERE id = $1;

-- name: family_of_refresh_token
SELECT r.family_id FROM refresh_token r JOIN token_family f ON f.id = r.family_id
 WHERE r.token_hash = $1 AND f.user_id = $2;

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

-- name: ping
SELECT 1;

-- name: recently_revoked_families
-- A user's sessions revoked within one access-token lifetime: their tokens may still be presented.
SELECT f.id FROM token_family f
 WHERE f.user_id = $1 AND f.revoked_at > now() - make_interval(secs => $2);

-- name: delete_expired_idempotency_keys
-- A batch of keys past their retention; transfers keep their history without them.
DELETE FROM idempotency_key
 WHERE id IN (SELECT k.id FROM idempotency_key k WHERE k.expires_at <= now()
               ORDER BY k.expires_at LIMIT $1);
