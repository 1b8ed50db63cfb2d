-- FX: the queries of payments/fx, loaded into payments.platform.db.Q.

-- name: create_fx_quote
SELECT status, body, replayed, stored, parties
  FROM create_fx_quote_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- name: fx_quote_of_user
-- EXPIRED and seconds_remaining are read from the database's clock, now.
SELECT o.body::text FROM fx_quote_out o WHERE o.id = $1 AND o.user_id = $2;

-- name: fx_transfer
-- POST /transactions with fx_quote_id: the quote consumed and both legs moved in one statement.
SELECT status, body, replayed, stored, parties, body::json ->> 'amount' AS amount,
       body::json ->> 'currency' AS currency, body::json ->> 'code' AS code
  FROM fx_transfer_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: fx_positions
-- The clearing accounts' balances, summed per currency (each clears over eight accounts): what
-- the service holds (positive) or owes (negative) in each currency because of FX transfers.
SELECT json_agg(r ORDER BY r.currency)::text
  FROM (SELECT a.currency, array_agg(a.account_number ORDER BY a.account_number) AS account_numbers,
               money_text(sum(a.balance_minor)::bigint, c.exponent) AS position,
               (SELECT count(*) FROM fx_quote q
                 WHERE q.status = 'USED' AND a.currency IN (q.from_currency, q.to_currency))
                   AS transfers
          FROM account a JOIN currency c ON c.code = a.currency
         WHERE a.kind = 'clearing'
         GROUP BY a.currency, c.exponent) r;
