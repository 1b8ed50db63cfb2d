-- API keys: long-lived credentials for servers (a merchant's back end), each acting as its owner.

-- A key is shown once, when it is made; only its SHA-256 is kept, so the table cannot be read
-- back into keys. A fast hash is right for them: a key is 32 random bytes, which no amount of
-- guessing finds, however cheap each guess. Argon2's slowness protects low-entropy passwords; here
-- it would only cost every first use of a key tens of milliseconds. `prefix` is the key's first
-- characters (`sk_` and 8 more), so that people can tell their keys apart. A revoked key stays,
-- with its revoked_at, for the owner's list and the audit log.
CREATE TABLE api_key (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES app_user (id),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix        text        NOT NULL CHECK (prefix ~ '^sk_[A-Za-z0-9_-]{8}$'),
    key_hash      bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz CHECK (revoked_at >= created_at)
);
CREATE INDEX api_key_user_idx ON api_key (user_id, id);  -- the owner's list, newest first
CREATE INDEX api_key_user_revoked_idx ON api_key (user_id, revoked_at);  -- active, recently revoked

-- POST /api-keys: a new key, unless the user already holds p_active_max unrevoked ones (then no
-- row). The user's row is locked first, so two creates for one user take turns; the count is a
-- statement of its own after the lock, so it sees the keys created by those before it (inside one
-- statement, a CTE's count would read the snapshot taken before the lock was had, and thirty
-- concurrent creates would all count the same keys). Audited in the same transaction.
CREATE FUNCTION create_api_key_v1(
    p_user_id bigint, p_name text, p_prefix text, p_key_hash bytea, p_active_max int,
    p_ip text, p_request_id text, OUT id bigint, OUT created_at text)
LANGUAGE plpgsql AS $$
DECLARE
    v_created timestamptz;
BEGIN
    PERFORM 1 FROM app_user u WHERE u.id = p_user_id FOR NO KEY UPDATE;
    IF (SELECT count(*) FROM api_key k WHERE k.user_id = p_user_id AND k.revoked_at IS NULL)
       >= p_active_max THEN
        RETURN;
    END IF;
    INSERT INTO api_key (user_id, name, prefix, key_hash)
    VALUES (p_user_id, p_name, p_prefix, p_key_hash)
    RETURNING api_key.id, api_key.created_at INTO id, v_created;
    created_at := utc_text(v_created);
    INSERT INTO audit_log (actor_id, action, target, ip, request_id, details)
    VALUES (p_user_id, 'api_key.created', id::text, p_ip, p_request_id,
            jsonb_build_object('name', p_name, 'prefix', p_prefix));
END $$;
