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
    pub expire_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

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

pub async fn insert_refresh(
    pool: &PgPool,
    hash: &str,
    user: Uuid,
    expires: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(hash)
        .bind(user)
        .bind(expires)
        .execute(pool)
        .await?;
    Ok(())
}

/// Outcome of presenting a refresh token.
pub enum RefreshUse {
    /// Valid and now spent.
    Spent(Uuid),
    /// Presented a second time: a sign of theft; every token of the user is revoked.
    Reused(Uuid),
    /// Unknown or expired.
    Invalid,
}

pub async fn use_refresh(pool: &PgPool, hash: &str) -> Result<RefreshUse, sqlx::Error> {
    let spent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    if let Some(user) = spent {
        return Ok(RefreshUse::Spent(user));
    }
    let reused: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    match reused {
        Some(user) => {
            sqlx::query(
                "UPDATE refresh_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
            )
            .bind(user)
            .execute(pool)
            .await?;
            Ok(RefreshUse::Reused(user))
        }
        None => Ok(RefreshUse::Invalid),
    }
}

/// Inserts an API key unless the user already has `max` active ones.
pub async fn insert_api_key(
    pool: &PgPool,
    key: &str,
    user: Uuid,
    label: &str,
    max: i64,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO api_keys (access_key, user_id, label)
         SELECT $1, $2, $3
         WHERE (SELECT count(*) FROM api_keys WHERE user_id = $2 AND revoked_at IS NULL) < $4
         RETURNING access_key, user_id, label, created_at, expire_at, revoked_at",
    )
    .bind(key)
    .bind(user)
    .bind(label)
    .bind(max)
    .fetch_optional(pool)
    .await
}

pub async fn api_keys(pool: &PgPool, user: Uuid) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT access_key, user_id, label, created_at, expire_at, revoked_at FROM api_keys
         WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

pub async fn api_key(pool: &PgPool, key: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as("SELECT access_key, user_id, label, created_at, expire_at, revoked_at FROM api_keys WHERE access_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

pub async fn revoke_api_key(
    pool: &PgPool,
    user: Uuid,
    key: &str,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE access_key = $1 AND user_id = $2
         RETURNING access_key, user_id, label, created_at, expire_at, revoked_at",
    )
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

pub async fn forget_old_nonces(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM api_nonces WHERE created_at < now() - interval '1 day'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
