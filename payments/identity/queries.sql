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

-- name: recently_revoked_families
-- A user's sessions revoked within one access-token lifetime: their tokens may still be presented.
SELECT f.id FROM token_family f
 WHERE f.user_id = $1 AND f.revoked_at > now() - make_interval(secs => $2);

-- name: make_admin
-- The user's role becomes admin; the audit log says who was made one, and how.
WITH promoted AS (UPDATE app_user SET role = 'admin' WHERE lower(email) = lower($1) RETURNING id)
INSERT INTO audit_log (actor_id, action, target, details)
SELECT NULL, 'admin.granted', p.id::text, jsonb_build_object('by', 'create-admin command')
  FROM promoted p
RETURNING target::bigint AS user_id;
