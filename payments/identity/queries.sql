-- Users and login sessions: the queries of payments/identity, loaded into payments.platform.db.Q.

-- name: register_user
SELECT register_user_v1($1, $2, $3, $4, $5);

-- name: user_by_email
SELECT u.id, u.email, u.full_name, u.password_hash, u.role
  FROM app_user u WHERE lower(u.email) = lower($1);

-- name: user_by_id
SELECT u.id, u.email, u.full_name, u.role FROM app_user u WHERE u.id = $1;

-- name: rehash_password
UPDATE app_user SET password_hash = $2 WHERE id = $1;

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
   FOR NO KEY UPDATE OF r;

-- name: use_refresh_token
UPDATE refresh_token SET used_at = now() WHERE id = $1;

-- name: revoke_token_family
UPDATE token_family SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1;

-- name: token_family_revoked
SELECT revoked_at IS NOT NULL FROM token_family WHERE id = $1;

-- name: family_of_refresh_token
SELECT r.family_id FROM refresh_token r JOIN token_family f ON f.id = r.family_id
 WHERE r.token_hash = $1 AND f.user_id = $2;

-- name: recently_revoked_credentials
-- A user's sessions revoked within one access-token lifetime ($2 seconds: their tokens may still
-- be presented) and API keys revoked within $3 seconds (a process may still hold the key's owner
-- in its cache): what Redis must deny again after it lost its denylist.
SELECT f.id::text AS family_id, NULL::bigint AS api_key_id FROM token_family f
 WHERE f.user_id = $1 AND f.revoked_at > now() - make_interval(secs => $2)
 UNION ALL
SELECT NULL, k.id FROM api_key k
 WHERE k.user_id = $1 AND k.revoked_at > now() - make_interval(secs => $3);

-- name: make_admin
-- The user's role becomes admin; the audit log says who was made one, and how.
WITH promoted AS (UPDATE app_user SET role = 'admin' WHERE lower(email) = lower($1) RETURNING id)
INSERT INTO audit_log (actor_id, action, target, details)
SELECT NULL, 'admin.granted', p.id::text, jsonb_build_object('by', 'create-admin command')
  FROM promoted p
RETURNING target::bigint AS user_id;

-- name: create_api_key
SELECT id, created_at FROM create_api_key_v1($1, $2, $3, $4, $5, $6, $7);

-- name: api_keys_of_user
-- Newest first, keyset on id; active and revoked alike. Never the key: only its hash is kept.
SELECT k.id,
       (SELECT row_to_json(r)::text
          FROM (SELECT k.id, k.name, k.prefix, utc_text(k.created_at) AS created_at,
                       utc_text(k.last_used_at) AS last_used_at,
                       utc_text(k.revoked_at) AS revoked_at) r) AS body
  FROM api_key k
 WHERE k.user_id = $1 AND k.id < $2
 ORDER BY k.id DESC
 LIMIT $3;

-- name: revoke_api_key
-- The caller's key, revoked once (revoking it again changes nothing and is not audited again);
-- no row for a key that is not the caller's.
WITH target AS (
    SELECT k.id, k.revoked_at IS NULL AS active FROM api_key k
     WHERE k.id = $1 AND k.user_id = $2
       FOR NO KEY UPDATE
), revoked AS (
    UPDATE api_key k SET revoked_at = now() FROM target t WHERE k.id = t.id AND t.active
    RETURNING k.id
), audited AS (
    INSERT INTO audit_log (actor_id, action, target, ip, request_id)
    SELECT $2, 'api_key.revoked', r.id::text, $3, $4 FROM revoked r
)
SELECT t.id FROM target t;

-- name: api_key_owner
-- The owner of a presented key, by its hash, for a process that has not seen it lately. Its
-- last_used_at is written at most once in $2 seconds, not on every use.
WITH found AS (
    SELECT k.id, k.user_id, u.role, k.revoked_at IS NOT NULL AS revoked, k.last_used_at
      FROM api_key k JOIN app_user u ON u.id = k.user_id
     WHERE k.key_hash = $1
), used AS (
    UPDATE api_key k SET last_used_at = now()
      FROM found f
     WHERE k.id = f.id AND NOT f.revoked
       AND (f.last_used_at IS NULL OR f.last_used_at <= now() - make_interval(secs => $2))
)
SELECT f.id, f.user_id, f.role, f.revoked FROM found f;

-- name: api_key_revoked
SELECT revoked_at IS NOT NULL FROM api_key WHERE id = $1;
