-- The core of the books: users, accounts, transfers, the double-entry ledger, idempotency keys and
-- refresh tokens. Money is integer minor units; every rule is checked here as well as in Python.

-- Currencies we hold, with their number of minor digits (ISO 4217).
CREATE TABLE currency (
    code      text     PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    exponent  smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
INSERT INTO currency (code, exponent) VALUES ('USD', 2), ('EUR', 2), ('GBP', 2), ('ZAR', 2), ('JPY', 0);

-- People who sign in. Emails are unique without regard to case.
CREATE TABLE app_user (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    full_name      text        NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    password_hash  text        NOT NULL CHECK (length(password_hash) BETWEEN 20 AND 512),
    role           text        NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX app_user_email_key ON app_user (lower(email));

-- Accounts are never deleted. A customer holds one per currency; each currency has one funding
-- account, owned by nobody, that pays opening balances, so the ledger sums to zero per currency.
CREATE TABLE account (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_number  text        NOT NULL UNIQUE
                                DEFAULT 'AC' || upper(substr(md5(gen_random_uuid()::text), 1, 14))
                                CHECK (account_number ~ '^(AC[0-9A-F]{14}|FUND[A-Z]{3})$'),
    user_id         bigint      REFERENCES app_user (id),
    kind            text        NOT NULL DEFAULT 'customer' CHECK (kind IN ('customer', 'funding')),
    currency        text        NOT NULL REFERENCES currency (code),
    balance_minor   bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (balance_minor >= 0 OR kind = 'funding'),
    CHECK ((kind = 'customer') = (user_id IS NOT NULL))
);
CREATE UNIQUE INDEX account_user_currency_key ON account (user_id, currency) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX account_funding_currency_key ON account (currency) WHERE kind = 'funding';
INSERT INTO account (account_number, kind, currency)
SELECT 'FUND' || code, 'funding', code FROM currency;

-- One movement of money between two accounts of one currency. Immutable once written.
CREATE TABLE transfer (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_account_id   bigint      NOT NULL REFERENCES account (id),
    target_account_id   bigint      NOT NULL REFERENCES account (id),
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            text        NOT NULL REFERENCES currency (code),
    kind                text        NOT NULL CHECK (kind IN ('transfer', 'opening', 'reversal')),
    status              text        NOT NULL DEFAULT 'COMPLETED' CHECK (status IN ('COMPLETED')),
    description         text        CHECK (length(description) <= 500),
    reverses_id         bigint      UNIQUE REFERENCES transfer (id),
    idempotency_key_id  bigint      UNIQUE,  -- one key moves money at most once
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (source_account_id <> target_account_id),
    CHECK ((kind = 'reversal') = (reverses_id IS NOT NULL))
);
CREATE INDEX transfer_source_idx ON transfer (source_account_id, id);
CREATE INDEX transfer_target_idx ON transfer (target_account_id, id);

-- Double entry: every transfer writes one debit and one credit of its amount. A balance is the
-- sum of its account's credits less its debits; balance_after_minor records it after each entry.
CREATE TABLE ledger_entry (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id          bigint      NOT NULL REFERENCES transfer (id),
    account_id           bigint      NOT NULL REFERENCES account (id),
    direction            text        NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount_minor         bigint      NOT NULL CHECK (amount_minor > 0),
    balance_after_minor  bigint      NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transfer_id, direction)
);
CREATE INDEX ledger_entry_account_idx ON ledger_entry (account_id, id);

-- The durable record of an Idempotency-Key: claimed and answered in the same transaction as the
-- work it guards, so a retry after a crash, or after Redis lost everything, never runs twice.
CREATE TABLE idempotency_key (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal_id      bigint      NOT NULL REFERENCES app_user (id),
    key               text        NOT NULL CHECK (key ~ '^[\x20-\x7E]{1,255}$'),
    fingerprint       bytea       NOT NULL CHECK (length(fingerprint) = 32),
    response_status   smallint    CHECK (response_status BETWEEN 200 AND 499),
    response_body     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    UNIQUE (principal_id, key)
);
CREATE INDEX idempotency_key_expires_idx ON idempotency_key (expires_at);

-- A login starts a token family; refresh tokens rotate within it. Revoking the family refuses
-- its refresh tokens and every access token issued from it (they carry its id as `sid`).
CREATE TABLE token_family (
    id          uuid        PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES app_user (id),
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_family_user_idx ON token_family (user_id, revoked_at);

-- Refresh tokens, stored as SHA-256 of the opaque token; each works once.
CREATE TABLE refresh_token (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    family_id   uuid        NOT NULL REFERENCES token_family (id),
    parent_id   bigint      REFERENCES refresh_token (id),
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_token_family_idx ON refresh_token (family_id);

-- Rendering. Responses about money are built here, so that the first answer and every replay of
-- it are the same bytes, and the transfer path costs one round trip.

CREATE FUNCTION money_text(amount_minor bigint, exponent smallint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT round(amount_minor::numeric / (10::numeric ^ exponent), exponent)::text
$$;

CREATE FUNCTION utc_text(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

CREATE FUNCTION problem_text(status int, code text, title text, detail text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT json_build_object('type', '/problems/' || code, 'title', title, 'status', status,
                             'code', code, 'detail', detail)::text
$$;

CREATE VIEW account_out AS
SELECT a.id, a.user_id,
       json_build_object('id', a.id, 'account_number', a.account_number, 'currency', a.currency,
                         'balance', money_text(a.balance_minor, c.exponent),
                         'created_at', utc_text(a.created_at)) AS body
  FROM account a JOIN currency c ON c.code = a.currency;

CREATE VIEW transfer_out AS
SELECT t.id, s.user_id AS source_user_id, d.user_id AS target_user_id,
       json_build_object('id', t.id, 'from_account_number', s.account_number,
                         'to_account_number', d.account_number,
                         'amount', money_text(t.amount_minor, c.exponent), 'currency', t.currency,
                         'status', t.status, 'kind', t.kind, 'description', t.description,
                         'reverses', t.reverses_id, 'created_at', utc_text(t.created_at)) AS body
  FROM transfer t
  JOIN account s ON s.id = t.source_account_id
  JOIN account d ON d.id = t.target_account_id
  JOIN currency c ON c.code = t.currency;
