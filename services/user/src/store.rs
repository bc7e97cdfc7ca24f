//! SQL for users, refresh tokens, API keys and request nonces.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub account_opened: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub access_key: String,
    pub user_id: Uuid,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expire_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Permission names (`view_accounts`, `view_orders`, `make_orders`).
    pub permissions: Vec<String>,
    /// The version of `API_KEY_SECRET` its secret is derived from.
    pub secret_version: i16,
}

const API_KEY_COLUMNS: &str =
    "access_key, user_id, label, created_at, expire_at, revoked_at, permissions, secret_version";

/// Inserts a user; `None` when the email is taken.
pub async fn insert_user(
    pool: &PgPool,
    id: Uuid,
    email: &str,
    hash: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (email) DO NOTHING
         RETURNING id, email, password_hash, account_opened, created_at",
    )
    .bind(id)
    .bind(email)
    .bind(hash)
    .fetch_optional(pool)
    .await
}

pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, email, password_hash, account_opened, created_at FROM users WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(pool)
    .await
}

pub async fn user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, email, password_hash, account_opened, created_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn mark_account_opened(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET account_opened = true WHERE id = $1 AND NOT account_opened")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Users whose paper account is not open yet (registration interrupted).
pub async fn users_without_account(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM users WHERE NOT account_opened ORDER BY created_at LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Opens a session for `user` with its first refresh token, in one transaction.
pub async fn open_session(
    pool: &PgPool,
    session: Uuid,
    user: Uuid,
    hash: &str,
    expires: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO sessions (id, user_id) VALUES ($1, $2)")
        .bind(session)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, session_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(user)
    .bind(session)
    .bind(expires)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Whether `session` of `user` exists and has not ended.
pub async fn session_live(pool: &PgPool, session: Uuid, user: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT revoked_at IS NULL FROM sessions WHERE id = $1 AND user_id = $2",
    )
    .bind(session)
    .bind(user)
    .fetch_optional(pool)
    .await?
    .unwrap_or(false))
}

/// Ends `session` (every session of `user` when `None`): its access tokens stop
/// verifying and its refresh tokens are spent. Returns how many ended.
pub async fn end_sessions(
    pool: &PgPool,
    user: Uuid,
    session: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended = end_sessions_in(&mut tx, user, session).await?;
    tx.commit().await?;
    Ok(ended)
}

async fn end_sessions_in(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
    session: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = now()
         WHERE user_id = $1 AND ($2::uuid IS NULL OR id = $2) AND revoked_at IS NULL",
    )
    .bind(user)
    .bind(session)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE refresh_tokens SET used_at = now()
         WHERE user_id = $1 AND ($2::uuid IS NULL OR session_id = $2) AND used_at IS NULL",
    )
    .bind(user)
    .bind(session)
    .execute(&mut *tx)
    .await?;
    Ok(ended)
}

/// Outcome of presenting a refresh token.
pub enum RefreshUse {
    /// Valid and now spent; its successor is stored. (user, session)
    Spent(Uuid, Uuid),
    /// Spent moments ago, and its successor is still unused: a retry of that
    /// refresh (its answer was lost), answered with the same successor.
    Retried(Uuid, Uuid),
    /// Presented again after its successor was used, or long after it was
    /// spent: a sign of theft; its session is ended (the user's others stay).
    Reused(Uuid, Uuid),
    /// Unknown or expired.
    Invalid,
}

/// Spends the refresh token `hash` for its successor `successor` (derived from
/// the token, so a retry names the same one), in one transaction: the token is
/// never spent without its successor stored.
pub async fn use_refresh(
    pool: &PgPool,
    hash: &str,
    successor: &str,
    successor_expires: DateTime<Utc>,
    retry_grace: std::time::Duration,
) -> Result<RefreshUse, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, Uuid, Option<DateTime<Utc>>, bool)> = sqlx::query_as(
        "SELECT user_id, session_id, used_at, expires_at > now() FROM refresh_tokens
         WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match row {
        None | Some((_, _, None, false)) => RefreshUse::Invalid,
        Some((user, session, None, true)) => {
            sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, user_id, session_id, expires_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(successor)
            .bind(user)
            .bind(session)
            .bind(successor_expires)
            .execute(&mut *tx)
            .await?;
            RefreshUse::Spent(user, session)
        }
        Some((user, session, Some(used_at), _)) => {
            let retry: bool = sqlx::query_scalar(
                "SELECT $3 > now() - $4 * interval '1 millisecond' AND EXISTS (
                    SELECT 1 FROM refresh_tokens
                    WHERE token_hash = $1 AND user_id = $2 AND used_at IS NULL AND expires_at > now())",
            )
            .bind(successor)
            .bind(user)
            .bind(used_at)
            .bind(retry_grace.as_millis() as i64)
            .fetch_one(&mut *tx)
            .await?;
            if retry {
                RefreshUse::Retried(user, session)
            } else {
                end_sessions_in(&mut tx, user, Some(session)).await?;
                RefreshUse::Reused(user, session)
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// A new API key's terms.
pub struct NewApiKey<'a> {
    pub access_key: &'a str,
    pub user: Uuid,
    pub label: &'a str,
    pub permissions: &'a [String],
    pub expire_at: DateTime<Utc>,
    pub secret_version: i16,
}

/// Inserts an API key unless the user already has `max` usable ones. The
/// user's row is locked first, so concurrent inserts count one after another
/// (each statement under READ COMMITTED sees what committed before it began).
pub async fn insert_api_key(
    pool: &PgPool,
    key: &NewApiKey<'_>,
    max: i64,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
        .bind(key.user)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (access_key, user_id, label, permissions, expire_at, secret_version)
         SELECT $1, $2, $3, $4, $5, $7
         WHERE (SELECT count(*) FROM api_keys
                WHERE user_id = $2 AND revoked_at IS NULL AND expire_at > now()) < $6
         RETURNING {API_KEY_COLUMNS}"
    )))
    .bind(key.access_key)
    .bind(key.user)
    .bind(key.label)
    .bind(key.permissions)
    .bind(key.expire_at)
    .bind(max)
    .bind(key.secret_version)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn api_keys(pool: &PgPool, user: Uuid) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC"
    )))
    .bind(user)
    .fetch_all(pool)
    .await
}

pub async fn api_key(pool: &PgPool, key: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE access_key = $1"
    )))
    .bind(key)
    .fetch_optional(pool)
    .await
}

pub async fn revoke_api_key(
    pool: &PgPool,
    user: Uuid,
    key: &str,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE access_key = $1 AND user_id = $2
         RETURNING {API_KEY_COLUMNS}"
    )))
    .bind(key)
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// Records a nonce; false when it was used before.
pub async fn use_nonce(pool: &PgPool, key: &str, nonce: &str) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO api_nonces (access_key, nonce) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(nonce)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// What one pass of [`forget_dead_records`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub nonces: u64,
    pub refresh_tokens: u64,
    pub sessions: u64,
}

/// Forgets everything that can no longer verify anything: the nonces of dead
/// keys, long-expired refresh tokens, then the sessions left without any.
pub async fn forget_dead_records(
    pool: &PgPool,
    access_ttl: std::time::Duration,
) -> Result<Forgotten, sqlx::Error> {
    Ok(Forgotten {
        nonces: forget_dead_nonces(pool).await?,
        refresh_tokens: forget_expired_refresh_tokens(pool).await?,
        sessions: forget_dead_sessions(pool, access_ttl).await?,
    })
}

/// Forgets refresh tokens that expired over a day ago: an expired token is
/// refused whether or not its row exists, so keeping it protects nothing.
pub async fn forget_expired_refresh_tokens(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Forgets sessions none of whose access tokens can still verify: ended, or
/// without a refresh token (they are swept a day after expiring, longer than an
/// access token lives), and older than `access_ttl`.
pub async fn forget_dead_sessions(
    pool: &PgPool,
    access_ttl: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM sessions s
         WHERE s.created_at < now() - $1 * interval '1 millisecond'
           AND (s.revoked_at < now() - $1 * interval '1 millisecond'
                OR NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id))",
    )
    .bind(access_ttl.as_millis() as i64)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Forgets the nonces of keys that can no longer verify a token (expired or
/// revoked): only then can a nonce not be replayed.
pub async fn forget_dead_nonces(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM api_nonces n USING api_keys k
         WHERE n.access_key = k.access_key AND (k.revoked_at IS NOT NULL OR k.expire_at <= now())",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
