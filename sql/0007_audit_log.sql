-- The audit log becomes a hash chain, like the ledger: each row's `hash` covers its own fields and
-- `prev_hash`, the hash of the row before it, so a row changed or deleted directly in the database
-- is found by GET /admin/audit-logs/verify. Every INSERT into audit_log, by any statement, is
-- chained by a trigger: the functions that already audit in the same transaction as their change
-- (deposit_v1, create_api_key_v1, the API-key revocation, create-admin) are chained unchanged.
--
-- THE HASH, for an auditor to recompute by hand. A row's hash is SHA-256 over the UTF-8 bytes of
-- one line of compact JSON (no spaces), an array of nine elements in this order:
--
--   [prev_hash, id, at, actor_id, action, target, ip, request_id, details]
--
--   prev_hash   the previous row's hash, as 64 lower-case hex digits; for the first row, 64 zeros
--   id          a JSON number
--   at          a JSON string, UTC, microseconds: "2026-11-21T10:30:00.123456Z"
--   actor_id    a JSON number, or null
--   action, target, ip, request_id   JSON strings, or null
--   details     a JSON string holding the text PostgreSQL prints for the jsonb (details::text)
--
-- Strings are escaped as JSON requires (\" \\ \b \f \n \r \t, other control characters \u00XX,
-- everything else as it is, not as \u escapes): PostgreSQL's to_json and Python's
-- json.dumps(..., ensure_ascii=False) write the same text. In Python:
--
--   row = await conn.fetchrow("SELECT *, details::text AS d FROM audit_log WHERE id = $1", n)
--   at = row["at"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
--   fields = [row["prev_hash"].hex(), row["id"], at, row["actor_id"], row["action"],
--             row["target"], row["ip"], row["request_id"], row["d"]]
--   assert hashlib.sha256(json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
--                         .encode()).digest() == row["hash"]
--
-- WHY IT NEVER FORKS. The chain's head (the last id and hash) is one row, audit_chain_head. The
-- trigger locks it (FOR UPDATE), reads the previous hash, takes the row's id from the sequence
-- only then, and writes the new head; the lock is held until the transaction ends. So writers
-- take turns, each sees the hash the one before it committed, and ids follow the chain: ordering
-- the rows by id walks the chain. The head is the last lock a writer takes (every audited change
-- audits after its own locks), so it adds no deadlock; the buffered writer of the API (one
-- statement per batch, payments/admin/audit.py) takes it once per batch.

ALTER TABLE audit_log ADD COLUMN prev_hash bytea CHECK (length(prev_hash) = 32),
                      ADD COLUMN hash      bytea CHECK (length(hash) = 32);

-- Ids come from the chain's trigger, after the head's lock, so that id order is chain order (an
-- identity default would be drawn before the lock, and two writers could commit out of order).
ALTER TABLE audit_log ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE audit_log_id_seq OWNED BY audit_log.id;
SELECT setval('audit_log_id_seq', coalesce(max(id), 0) + 1, false) FROM audit_log;

-- The chain's head: exactly one row. Its lock serializes the chain's extensions; its last_hash
-- also lets the check notice rows deleted from the end of the log.
CREATE TABLE audit_chain_head (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_id    bigint,
    last_hash  bytea   NOT NULL CHECK (length(last_hash) = 32)
);

-- The previous hash of the first row.
CREATE FUNCTION audit_genesis_v1() RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT decode(repeat('00', 32), 'hex') $$;

-- The hashed text, defined once (see the top of this file).
CREATE FUNCTION audit_canonical_v1(
    p_prev_hash bytea, p_id bigint, p_at timestamptz, p_actor_id bigint, p_action text,
    p_target text, p_ip text, p_request_id text, p_details jsonb) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT '[' || array_to_string(ARRAY[
           to_json(encode(p_prev_hash, 'hex'))::text,
           p_id::text,
           to_json(to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text,
           coalesce(p_actor_id::text, 'null'),
           coalesce(to_json(p_action)::text, 'null'),
           coalesce(to_json(p_target)::text, 'null'),
           coalesce(to_json(p_ip)::text, 'null'),
           coalesce(to_json(p_request_id)::text, 'null'),
           coalesce(to_json(p_details::text)::text, 'null')], ',') || ']'
$$;

CREATE FUNCTION audit_hash_v1(
    p_prev_hash bytea, p_id bigint, p_at timestamptz, p_actor_id bigint, p_action text,
    p_target text, p_ip text, p_request_id text, p_details jsonb) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT sha256(convert_to(audit_canonical_v1(p_prev_hash, p_id, p_at, p_actor_id, p_action,
                                            p_target, p_ip, p_request_id, p_details), 'UTF8'))
$$;

-- Chain the rows written before this migration, in id order. They are history, so this is a
-- deliberate repair; the escape is closed again at the end of the file.
SELECT set_config('payments.history_repair', 'on', true);
DO $$
DECLARE
    v_row record;
    v_prev bytea := audit_genesis_v1();
BEGIN
    FOR v_row IN SELECT * FROM audit_log ORDER BY id LOOP
        UPDATE audit_log SET prev_hash = v_prev,
                             hash = audit_hash_v1(v_prev, v_row.id, v_row.at, v_row.actor_id,
                                                  v_row.action, v_row.target, v_row.ip,
                                                  v_row.request_id, v_row.details)
         WHERE id = v_row.id
        RETURNING hash INTO v_prev;
    END LOOP;
END $$;
INSERT INTO audit_chain_head (last_id, last_hash)
SELECT (SELECT max(id) FROM audit_log),
       coalesce((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), audit_genesis_v1());
SELECT set_config('payments.history_repair', 'off', true);
ALTER TABLE audit_log ALTER COLUMN prev_hash SET NOT NULL,
                      ALTER COLUMN hash SET NOT NULL;

-- Extends the chain by the row being inserted, under the head's lock (see the top of this file).
-- Whatever id, prev_hash or hash the INSERT named is replaced: the chain decides them.
CREATE FUNCTION audit_chain_extend() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_prev bytea;
BEGIN
    SELECT h.last_hash INTO STRICT v_prev FROM audit_chain_head h FOR UPDATE;
    NEW.id := nextval('audit_log_id_seq');
    NEW.at := coalesce(NEW.at, now());
    NEW.details := coalesce(NEW.details, '{}');
    NEW.prev_hash := v_prev;
    NEW.hash := audit_hash_v1(v_prev, NEW.id, NEW.at, NEW.actor_id, NEW.action, NEW.target,
                              NEW.ip, NEW.request_id, NEW.details);
    UPDATE audit_chain_head SET last_id = NEW.id, last_hash = NEW.hash;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_chain_extend();

-- UPDATE and DELETE are refused by audit_log_append_only (0003); TRUNCATE is refused here too,
-- unless the same repair escape is on. A repair that empties the log starts a new chain.
CREATE FUNCTION refuse_history_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('payments.history_repair', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_truncate();

CREATE FUNCTION audit_chain_restart() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_chain_head SET last_id = NULL, last_hash = audit_genesis_v1();
    RETURN NULL;
END $$;
CREATE TRIGGER audit_log_truncated AFTER TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_restart();

-- The one way every domain writes an audit row from SQL, in the transaction of the change it
-- describes (payroll jobs, webhook endpoints, ...). Never a password, token or key in any field.
CREATE FUNCTION audit_v1(
    p_actor_id bigint, p_action text, p_target text, p_ip text, p_request_id text,
    p_details jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE sql AS $$
INSERT INTO audit_log (actor_id, action, target, ip, request_id, details)
VALUES (p_actor_id, p_action, p_target, p_ip, p_request_id, coalesce(p_details, '{}'))
RETURNING id
$$;

-- The chain, checked in one statement, the rows never leaving the database: the first row whose
-- stored fields no longer give its hash, or whose prev_hash is not the hash of the row before it
-- (a row deleted from the middle is found at the row after it); then whether the last row is the
-- head (rows deleted from the end are found at the head's last id).
CREATE FUNCTION audit_chain_check_v1(OUT valid boolean, OUT entries bigint, OUT tampered_at bigint)
LANGUAGE sql STABLE AS $$
WITH chain AS (
    SELECT l.id, l.hash, l.prev_hash,
           audit_hash_v1(l.prev_hash, l.id, l.at, l.actor_id, l.action, l.target, l.ip,
                         l.request_id, l.details) AS recomputed,
           lag(l.hash, 1, audit_genesis_v1()) OVER (ORDER BY l.id) AS previous_hash
      FROM audit_log l
), summary AS (
    SELECT count(*) AS entries,
           min(c.id) FILTER (WHERE c.hash IS DISTINCT FROM c.recomputed
                                OR c.prev_hash IS DISTINCT FROM c.previous_hash) AS broken_id,
           max(c.id) AS last_id,
           (array_agg(c.hash ORDER BY c.id DESC))[1] AS last_hash
      FROM chain c
)
SELECT s.broken_id IS NULL AND h.last_id IS NOT DISTINCT FROM s.last_id
                           AND h.last_hash = coalesce(s.last_hash, audit_genesis_v1()),
       s.entries,
       coalesce(s.broken_id,
                CASE WHEN h.last_id IS NOT DISTINCT FROM s.last_id
                          AND h.last_hash = coalesce(s.last_hash, audit_genesis_v1())
                     THEN NULL ELSE coalesce(h.last_id, s.last_id) END)
  FROM summary s CROSS JOIN audit_chain_head h
$$;

-- POST /transactions/{id}/reverse, as reverse_transfer_v1, and a reversal that moved money is
-- written to the audit log in the same transaction, with the client's address and request id.
-- v1 stays as it was, for API processes of the release before this one (a rolling deploy).
CREATE FUNCTION reverse_transfer_v2(
    p_user_id bigint, p_is_admin boolean, p_key text, p_fingerprint bytea, p_key_ttl_s int,
    p_transfer_id bigint, p_ip text, p_request_id text,
    OUT status int, OUT body text, OUT replayed boolean, OUT stored boolean, OUT parties bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    SELECT r.status, r.body, r.replayed, r.stored, r.parties
      INTO status, body, replayed, stored, parties
      FROM reverse_transfer_v1(p_user_id, p_is_admin, p_key, p_fingerprint, p_key_ttl_s,
                               p_transfer_id) r;
    -- A reversal that ran now (not a replay) and moved the money: the head's lock comes last,
    -- after the accounts and the original transfer that the reversal locked.
    IF status = 201 AND NOT replayed THEN
        PERFORM audit_v1(p_user_id, 'transaction.reversed', p_transfer_id::text, p_ip,
                         p_request_id,
                         jsonb_build_object('reversal_id', (body::jsonb ->> 'id')::bigint,
                                            'amount', body::jsonb ->> 'amount',
                                            'currency', body::jsonb ->> 'currency',
                                            'by_admin', p_is_admin));
    END IF;
END $$;
