//! The user service with a real inventory and Postgres, over real gRPC.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use exchange_proto::inventory::v1::GetBalancesRequest;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::user::v1 as pb;
use exchange_proto::user::v1::user_service_client::UserServiceClient;
use pb::verify_credentials_request::Credentials;
use service_kit::postgres::DbArgs;
use sha2::Digest;
use test_support::{Running, Started, TcpProxy, TestDb};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use user::jwt::{self, Alg};

async fn start_inventory(db: &TestDb) -> Started {
    let config = inventory::Config::local(DbArgs {
        database_url: Some(db.role_url(inventory::SCHEMA)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 4,
    });
    let stop = CancellationToken::new();
    let app = inventory::App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    Started {
        grpc,
        admin,
        running: Running::spawn(stop, app.run()),
    }
}

async fn start_user(db: &TestDb, inventory: SocketAddr) -> Started {
    start_user_with(db, inventory, |_| {}).await
}

async fn start_user_with(
    db: &TestDb,
    inventory: SocketAddr,
    tweak: impl FnOnce(&mut user::Config),
) -> Started {
    test_support::init_logs();
    let mut config = user::Config::local(
        DbArgs {
            database_url: Some(db.role_url(user::SCHEMA)),
            database_admin_url: Some(db.admin_url()),
            database_max_connections: 4,
        },
        inventory,
    );
    config.access_token_ttl = Duration::from_secs(2);
    tweak(&mut config);
    let stop = CancellationToken::new();
    let app = user::App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    Started {
        grpc,
        admin,
        running: Running::spawn(stop, app.run()),
    }
}

struct Env {
    users: UserServiceClient<Channel>,
    inventory: InventoryServiceClient<Channel>,
    running: Vec<Running>,
}

async fn env(db: &TestDb) -> Env {
    env_with(db, |_| {}).await
}

async fn env_with(db: &TestDb, tweak: impl FnOnce(&mut user::Config)) -> Env {
    let inv = start_inventory(db).await;
    test_support::wait_serving(inv.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let usr = start_user_with(db, inv.grpc, tweak).await;
    test_support::wait_serving(usr.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    Env {
        users: UserServiceClient::connect(format!("http://{}", usr.grpc))
            .await
            .unwrap(),
        inventory: InventoryServiceClient::connect(format!("http://{}", inv.grpc))
            .await
            .unwrap(),
        running: vec![inv.running, usr.running],
    }
}

impl Env {
    async fn stop(mut self) {
        while let Some(r) = self.running.pop() {
            r.stop().await;
        }
    }

    async fn register(
        &mut self,
        email: &str,
        password: &str,
    ) -> Result<pb::RegisterResponse, tonic::Status> {
        self.users
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn login(&mut self, email: &str, password: &str) -> Result<pb::TokenPair, tonic::Status> {
        self.users
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner().tokens.unwrap())
    }

    async fn verify(&mut self, credentials: Credentials) -> Result<String, tonic::Status> {
        self.verify_key(credentials).await.map(|r| r.user_id)
    }

    async fn verify_key(
        &mut self,
        credentials: Credentials,
    ) -> Result<pb::VerifyCredentialsResponse, tonic::Status> {
        self.users
            .verify_credentials(pb::VerifyCredentialsRequest {
                credentials: Some(credentials),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn krw(&mut self, user: &str) -> rust_decimal::Decimal {
        let b = self
            .inventory
            .get_balances(GetBalancesRequest {
                user_id: user.into(),
            })
            .await
            .unwrap()
            .into_inner();
        b.balances
            .iter()
            .find(|b| b.currency == "KRW")
            .map(|b| rust_decimal::Decimal::from_str(&b.balance).unwrap())
            .unwrap_or_default()
    }
}

fn name(err: &tonic::Status) -> Option<&str> {
    service_kit::grpc::error_name(err)
}

#[tokio::test]
async fn serves_health_reflection_metrics_and_stops_gracefully() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    let svc = start_user(&db, inv.grpc).await;
    test_support::assert_grpc_basics(svc.grpc, svc.admin, "exchange.user.v1.UserService")
        .await
        .unwrap();
    svc.running.stop().await;
    inv.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_key_creations_stop_at_the_limit() {
    let db = TestDb::create().await.unwrap();
    let mut e = env(&db).await;
    let id = e
        .register("judy@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let create = |users: &UserServiceClient<Channel>| {
        let mut users = users.clone();
        let request = pb::CreateApiKeyRequest {
            user_id: id.clone(),
            label: String::new(),
            permissions: vec![],
            password: "s3cret-password".into(),
        };
        async move { users.create_api_key(request).await }
    };
    for _ in 0..9 {
        create(&e.users).await.unwrap();
    }
    // Another creation of the tenth key, caught in the middle: its insert is
    // made but not committed while a request for an eleventh arrives.
    let pool = sqlx::PgPool::connect(&db.role_url(user::SCHEMA))
        .await
        .unwrap();
    let mut tenth = pool.begin().await.unwrap();
    let uid = uuid::Uuid::parse_str(&id).unwrap();
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
        .bind(uid)
        .execute(&mut *tenth)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO api_keys (access_key, user_id, expire_at) VALUES ('tenth', $1, now() + interval '1 day')",
    )
    .bind(uid)
    .execute(&mut *tenth)
    .await
    .unwrap();
    let eleventh = tokio::spawn(create(&e.users));
    // It waits for the user's lock (or, counting without it, is already done).
    test_support::eventually(Duration::from_secs(5), "the eleventh waits or ends", || {
        let pool = pool.clone();
        let done = eleventh.is_finished();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (done || waiting > 0).then_some(())
        }
    })
    .await
    .unwrap();
    tenth.commit().await.unwrap();
    let err = eleventh.await.unwrap().expect_err("an eleventh key");
    assert_eq!(name(&err), Some("api_key_limit"), "{err:?}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE user_id = $1")
        .bind(uid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(active, 10);
    pool.close().await;
    e.stop().await;
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    let svc = start_user_with(&db, inv.grpc, |c| c.grpc.grpc_reflection = false).await;
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let err = test_support::reflection_services(svc.grpc)
        .await
        .expect_err("no reflection");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    svc.running.stop().await;
    inv.running.stop().await;
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    test_support::assert_migrations_idempotent(
        &db,
        || start_user(&db, inv.grpc),
        "users",
        "users",
        "users",
        migrations,
    )
    .await
    .unwrap();
    inv.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_opens_one_paper_account_even_when_retried() {
    let db = TestDb::create().await.unwrap();
    let mut e = env(&db).await;
    let first = e
        .register("Alice@Example.com ", "correct horse")
        .await
        .unwrap();
    assert!(first.created);
    let user = first.user.unwrap();
    assert_eq!(user.email, "alice@example.com");
    let retry = e
        .register("alice@example.com", "correct horse")
        .await
        .unwrap();
    assert!(!retry.created);
    assert_eq!(
        retry.user.unwrap().id,
        user.id,
        "a retry returns the same user"
    );
    assert_eq!(
        e.krw(&user.id).await,
        rust_decimal::Decimal::from(10_000_000),
        "credited once"
    );
    let get = |id: String| {
        let mut users = e.users.clone();
        async move {
            users
                .get_user(pb::GetUserRequest { user_id: id })
                .await
                .map(|r| r.into_inner().user.unwrap_or_default())
        }
    };
    let fetched = get(user.id.clone()).await.unwrap();
    assert_eq!(
        (fetched.id.as_str(), fetched.email.as_str()),
        (user.id.as_str(), "alice@example.com")
    );
    let missing = get(uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let malformed = get("alice".into()).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    let taken = e
        .register("alice@example.com", "another password")
        .await
        .unwrap_err();
    assert_eq!(
        (taken.code(), name(&taken)),
        (Code::AlreadyExists, Some("email_already_registered"))
    );
    for (email, password) in [
        ("not-an-email", "long enough"),
        ("a@b.c", "short"),
        ("a b@c.d", "long enough"),
    ] {
        let err = e.register(email, password).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{email} / {password}");
    }
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_inventory_being_away() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    test_support::wait_serving(inv.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let proxy = TcpProxy::start(inv.grpc).await.unwrap();
    let usr = start_user(&db, proxy.addr).await;
    test_support::wait_serving(usr.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let mut users = UserServiceClient::connect(format!("http://{}", usr.grpc))
        .await
        .unwrap();
    proxy.cut();
    let err = users
        .register(pb::RegisterRequest {
            email: "bob@example.com".into(),
            password: "hunter2hunter2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    proxy.restore();
    let retry = test_support::eventually(
        Duration::from_secs(15),
        "registration once inventory is back",
        || {
            let mut users = users.clone();
            async move {
                users
                    .register(pb::RegisterRequest {
                        email: "bob@example.com".into(),
                        password: "hunter2hunter2".into(),
                    })
                    .await
                    .ok()
            }
        },
    )
    .await
    .unwrap()
    .into_inner();
    let mut inventory = InventoryServiceClient::connect(format!("http://{}", inv.grpc))
        .await
        .unwrap();
    let b = inventory
        .get_balances(GetBalancesRequest {
            user_id: retry.user.unwrap().id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.balances[0].balance, "10000000");
    usr.running.stop().await;
    inv.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_expire_refresh_once_and_refuse_forgeries() {
    let db = TestDb::create().await.unwrap();
    let mut e = env(&db).await;
    let id = e
        .register("carol@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let bad = e
        .login("carol@example.com", "wrong password")
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), name(&bad)),
        (Code::Unauthenticated, Some("invalid_credentials"))
    );
    let unknown = e
        .login("nobody@example.com", "s3cret-password")
        .await
        .unwrap_err();
    assert_eq!(
        unknown.message(),
        bad.message(),
        "unknown emails look like wrong passwords"
    );

    let pair = e
        .login("carol@example.com", "s3cret-password")
        .await
        .unwrap();
    assert_eq!(
        e.verify(Credentials::AccessToken(pair.access_token.clone()))
            .await
            .unwrap(),
        id
    );
    // Forged: signed with another key, alg none, tampered payload.
    let claims =
        serde_json::json!({"sub": id, "typ": "access", "exp": chrono::Utc::now().timestamp() + 60});
    let forged = jwt::sign(Alg::Hs256, b"not-the-key", &claims);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    for token in [
        forged,
        none,
        "garbage".to_owned(),
        pair.refresh_token.clone(),
    ] {
        let err = e
            .verify(Credentials::AccessToken(token.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token}");
    }
    // Refresh tokens are single use; a retry of a refresh whose answer was
    // lost gets the same new token; reuse after that revokes the family.
    let client = e.users.clone();
    let refresh = move |token: &str| {
        let mut users = client.clone();
        let request = pb::RefreshRequest {
            refresh_token: token.to_owned(),
        };
        async move {
            users
                .refresh(request)
                .await
                .map(|r| r.into_inner().tokens.unwrap())
        }
    };
    // A second sign-in: a session of its own, which theft in the first leaves alone.
    let other = e
        .login("carol@example.com", "s3cret-password")
        .await
        .unwrap();
    let next = refresh(&pair.refresh_token).await.unwrap();
    let retried = refresh(&pair.refresh_token).await.unwrap();
    assert_eq!(
        retried.refresh_token, next.refresh_token,
        "the retry is answered with the same successor, not treated as theft"
    );
    assert_ne!(next.refresh_token, pair.refresh_token);
    let after = refresh(&next.refresh_token).await.unwrap();
    let reused = refresh(&pair.refresh_token).await.unwrap_err();
    assert_eq!(name(&reused), Some("invalid_refresh_token"));
    let revoked = refresh(&after.refresh_token).await.unwrap_err();
    assert_eq!(
        name(&revoked),
        Some("invalid_refresh_token"),
        "reuse revoked the newer token too"
    );
    let ended = e
        .verify(Credentials::AccessToken(after.access_token.clone()))
        .await
        .unwrap_err();
    assert!(
        ended.message().contains("session has ended"),
        "the session's access tokens end with it: {ended:?}"
    );
    let other = refresh(&other.refresh_token).await.unwrap();
    assert_eq!(
        e.verify(Credentials::AccessToken(other.access_token.clone()))
            .await
            .unwrap(),
        id,
        "the user's other session goes on"
    );
    let garbage = refresh("not-a-token").await.unwrap_err();
    assert_eq!(name(&garbage), Some("invalid_refresh_token"));
    // Access tokens expire (2 s in this test).
    let token = other.access_token;
    let expired = test_support::eventually(Duration::from_secs(10), "token expiry", || {
        let mut users = e.users.clone();
        let token = token.clone();
        async move {
            let err = users
                .verify_credentials(pb::VerifyCredentialsRequest {
                    credentials: Some(Credentials::AccessToken(token)),
                })
                .await
                .err()?;
            Some(err)
        }
    })
    .await
    .unwrap();
    assert_eq!(name(&expired), Some("expired_access_token"));
    assert!(expired.message().contains("has expired"), "{expired:?}");
    // Refresh tokens long expired are swept; live ones stay.
    let pool = sqlx::PgPool::connect(&db.role_url(user::SCHEMA))
        .await
        .unwrap();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    let session = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, user_id) VALUES ($1, $2)")
        .bind(session)
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, session_id, expires_at)
         VALUES ('old', $1, $2, now() - interval '2 days'), ('lately', $1, $2, now() - interval '1 hour')",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .bind(session)
    .execute(&pool)
    .await
    .unwrap();
    // `user retention`, as its CronJob runs it: the service's own settings.
    let job = user::Config::local(
        DbArgs {
            database_url: Some(db.role_url(user::SCHEMA)),
            database_admin_url: None,
            database_max_connections: 1,
        },
        "127.0.0.1:9".parse().unwrap(),
    );
    let forgotten = user::retention(&job).await.unwrap();
    assert_eq!(forgotten.refresh_tokens, 1, "{forgotten:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, live + 1);
    pool.close().await;
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_one_at_a_time_or_everywhere_and_keys_take_the_password() {
    let db = TestDb::create().await.unwrap();
    let mut e = env_with(&db, |c| c.access_token_ttl = Duration::from_secs(600)).await;
    let id = e
        .register("olga@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let (laptop, phone, tablet) = (
        e.login("olga@example.com", "s3cret-password")
            .await
            .unwrap(),
        e.login("olga@example.com", "s3cret-password")
            .await
            .unwrap(),
        e.login("olga@example.com", "s3cret-password")
            .await
            .unwrap(),
    );
    let client = e.users.clone();
    let logout = move |token: &str, everywhere: bool| {
        let mut users = client.clone();
        let request = pb::LogoutRequest {
            access_token: token.to_owned(),
            everywhere,
        };
        async move { users.logout(request).await.map(|r| r.into_inner()) }
    };
    let client = e.users.clone();
    let refresh = move |token: &str| {
        let mut users = client.clone();
        let request = pb::RefreshRequest {
            refresh_token: token.to_owned(),
        };
        async move { users.refresh(request).await }
    };
    let out = logout(&laptop.access_token, false).await.unwrap();
    assert_eq!((out.user_id.as_str(), out.sessions_ended), (id.as_str(), 1));
    let err = e
        .verify(Credentials::AccessToken(laptop.access_token.clone()))
        .await
        .unwrap_err();
    assert!(err.message().contains("session has ended"), "{err:?}");
    let err = refresh(&laptop.refresh_token).await.unwrap_err();
    assert_eq!(name(&err), Some("invalid_refresh_token"));
    assert_eq!(
        e.verify(Credentials::AccessToken(phone.access_token.clone()))
            .await
            .unwrap(),
        id,
        "signing out on one device leaves the others signed in"
    );
    // A token of an ended session cannot sign anything else out.
    let err = logout(&laptop.access_token, true).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let phone = refresh(&phone.refresh_token)
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let out = logout(&phone.access_token, true).await.unwrap();
    assert_eq!(out.sessions_ended, 2, "the phone's and the tablet's");
    for t in [&phone, &tablet] {
        assert!(
            e.verify(Credentials::AccessToken(t.access_token.clone()))
                .await
                .is_err()
        );
        assert!(refresh(&t.refresh_token).await.is_err());
    }

    // Making an API key takes the password again: an access token alone will not do.
    let again = e
        .login("olga@example.com", "s3cret-password")
        .await
        .unwrap();
    let (client, id2) = (e.users.clone(), id.clone());
    let create = move |password: &str| {
        let mut users = client.clone();
        let request = pb::CreateApiKeyRequest {
            user_id: id2.clone(),
            label: String::new(),
            permissions: vec![],
            password: password.to_owned(),
        };
        async move { users.create_api_key(request).await }
    };
    let err = create("").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = create("wrong password").await.unwrap_err();
    assert_eq!(
        (err.code(), name(&err)),
        (Code::Unauthenticated, Some("invalid_credentials"))
    );
    let made = create("s3cret-password").await.unwrap().into_inner();
    assert_eq!(made.api_key.unwrap().access_key.len(), 40);
    assert!(
        e.verify(Credentials::AccessToken(again.access_token))
            .await
            .is_ok()
    );
    // Ended sessions are forgotten once none of their tokens can verify.
    let pool = sqlx::PgPool::connect(&db.role_url(user::SCHEMA))
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET created_at = now() - interval '1 hour', revoked_at = now() - interval '1 hour' WHERE revoked_at IS NOT NULL")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        user::store::forget_dead_sessions(&pool, Duration::from_secs(600))
            .await
            .unwrap(),
        3
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the live session stays");
    pool.close().await;
    e.stop().await;
}

#[tokio::test]
async fn refuses_to_start_without_its_secrets() {
    let db = TestDb::create().await.unwrap();
    type Tweak = fn(&mut user::Config);
    let cases: [(&str, Tweak); 3] = [
        ("JWT_SECRET is not set", |c| c.jwt_secret = None),
        ("API_KEY_SECRET is not set", |c| {
            c.api_key_secret = Some(String::new())
        }),
        ("JWT_SECRET is 5 bytes", |c| {
            c.jwt_secret = Some("short".into())
        }),
    ];
    for (want, tweak) in cases {
        let mut config = user::Config::local(
            DbArgs {
                database_url: Some(db.role_url(user::SCHEMA)),
                database_admin_url: Some(db.admin_url()),
                database_max_connections: 1,
            },
            "127.0.0.1:1".parse().unwrap(),
        );
        tweak(&mut config);
        let err = user::App::build(config, CancellationToken::new())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

fn upbit_token(access: &str, secret: &str, query: Option<&str>, nonce: &str, alg: Alg) -> String {
    let mut claims = serde_json::json!({"access_key": access, "nonce": nonce});
    if let Some(q) = query {
        claims["query_hash"] = hex::encode(sha2::Sha512::digest(q.as_bytes())).into();
        claims["query_hash_alg"] = "SHA512".into();
    }
    jwt::sign(alg, secret.as_bytes(), &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_sign_upbit_requests() {
    let db = TestDb::create().await.unwrap();
    let mut e = env(&db).await;
    let id = e
        .register("dave@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let key = e
        .users
        .create_api_key(pb::CreateApiKeyRequest {
            user_id: id.clone(),
            label: "bot".into(),
            permissions: vec![],
            password: "s3cret-password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!((key.access_key.len(), key.secret_key.len()), (40, 40));
    let listed = e
        .users
        .list_api_keys(pb::ListApiKeysRequest {
            user_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].secret_key.is_empty(),
        "the secret is shown only once"
    );

    let query = "market=KRW-BTC&side=bid&ord_type=price&price=10000";
    let upbit = |jwt: String, query: &str| {
        Credentials::Upbit(pb::UpbitToken {
            jwt,
            query: query.into(),
            alternatives: vec![],
        })
    };
    let ok = upbit_token(
        &key.access_key,
        &key.secret_key,
        Some(query),
        "n-1",
        Alg::Hs256,
    );
    assert_eq!(e.verify(upbit(ok.clone(), query)).await.unwrap(), id);
    let replay = e.verify(upbit(ok, query)).await.unwrap_err();
    assert_eq!(name(&replay), Some("nonce_used"));
    let hs512 = upbit_token(&key.access_key, &key.secret_key, None, "n-2", Alg::Hs512);
    assert_eq!(
        e.verify(upbit(hs512, "")).await.unwrap(),
        id,
        "no query, HS512"
    );
    let tampered = upbit_token(
        &key.access_key,
        &key.secret_key,
        Some(query),
        "n-3",
        Alg::Hs256,
    );
    let err = e
        .verify(upbit(
            tampered,
            "market=KRW-BTC&side=bid&ord_type=price&price=99999999",
        ))
        .await
        .unwrap_err();
    assert_eq!(name(&err), Some("invalid_query_payload"));
    let wrong_secret = upbit_token(
        &key.access_key,
        "x".repeat(40).as_str(),
        None,
        "n-4",
        Alg::Hs256,
    );
    assert_eq!(
        name(&e.verify(upbit(wrong_secret, "")).await.unwrap_err()),
        Some("jwt_verification")
    );
    let unknown = upbit_token(
        "A".repeat(40).as_str(),
        &key.secret_key,
        None,
        "n-5",
        Alg::Hs256,
    );
    assert_eq!(
        name(&e.verify(upbit(unknown, "")).await.unwrap_err()),
        Some("invalid_access_key")
    );

    e.users
        .revoke_api_key(pb::RevokeApiKeyRequest {
            user_id: id.clone(),
            access_key: key.access_key.clone(),
        })
        .await
        .unwrap();
    let after = upbit_token(&key.access_key, &key.secret_key, None, "n-6", Alg::Hs256);
    assert_eq!(
        name(&e.verify(upbit(after, "")).await.unwrap_err()),
        Some("invalid_access_key"),
        "revoked"
    );
    // Someone else cannot revoke or list this user's keys.
    let other = e
        .register("eve@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let err = e
        .users
        .revoke_api_key(pb::RevokeApiKeyRequest {
            user_id: other.clone(),
            access_key: key.access_key,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        e.users
            .list_api_keys(pb::ListApiKeysRequest { user_id: other })
            .await
            .unwrap()
            .into_inner()
            .api_keys
            .is_empty()
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_outlive_a_rotation_until_their_secret_is_retired() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    test_support::wait_serving(inv.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    const OLD: &str = "the-first-api-key-secret";
    const NEW: &str = "the-second-api-key-secret";
    // Starts the user service with `secret` at `version` and `retired`.
    let start = |version: i16, secret: &'static str, retired: Option<&'static str>| {
        start_user_with(&db, inv.grpc, move |c| {
            c.api_key_secret = Some(secret.into());
            c.api_key_secret_version = version;
            c.api_key_retired_secrets = retired.map(Into::into);
        })
    };
    let nonce = std::sync::atomic::AtomicU32::new(0);
    // Whether an Upbit token signed with `key`'s secret verifies.
    let verifies = |users: &UserServiceClient<Channel>, key: &pb::ApiKey| {
        let mut users = users.clone();
        let n = nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let credentials = signed(
            &key.secret_key,
            serde_json::json!({"access_key": key.access_key, "nonce": format!("n{n}")}),
        );
        async move {
            users
                .verify_credentials(pb::VerifyCredentialsRequest {
                    credentials: Some(credentials),
                })
                .await
        }
    };
    let connect = |at: SocketAddr| async move {
        test_support::wait_serving(at, "", Duration::from_secs(30))
            .await
            .unwrap();
        UserServiceClient::connect(format!("http://{at}"))
            .await
            .unwrap()
    };
    let make_key = |users: &UserServiceClient<Channel>, id: &str| {
        let mut users = users.clone();
        let request = pb::CreateApiKeyRequest {
            user_id: id.to_owned(),
            label: String::new(),
            permissions: vec![],
            password: "s3cret-password".into(),
        };
        async move {
            users
                .create_api_key(request)
                .await
                .unwrap()
                .into_inner()
                .api_key
                .unwrap()
        }
    };

    let first = start(1, OLD, None).await;
    let users = connect(first.grpc).await;
    let id = users
        .clone()
        .register(pb::RegisterRequest {
            email: "rota@example.com".into(),
            password: "s3cret-password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let old_key = make_key(&users, &id).await;
    verifies(&users, &old_key).await.unwrap();
    first.running.stop().await;

    // Rotated: version 2 is current, version 1 still verifies its keys.
    let second = start(2, NEW, Some("1:the-first-api-key-secret")).await;
    let users = connect(second.grpc).await;
    verifies(&users, &old_key)
        .await
        .expect("an old key outlives the rotation");
    let new_key = make_key(&users, &id).await;
    verifies(&users, &new_key).await.unwrap();
    second.running.stop().await;

    // Retired: version 1 is gone, and so are its keys; version 2's go on.
    let third = start(2, NEW, None).await;
    let users = connect(third.grpc).await;
    let err = verifies(&users, &old_key).await.unwrap_err();
    assert_eq!(name(&err), Some("invalid_access_key"), "{err:?}");
    assert!(err.message().contains("retired"), "{err:?}");
    verifies(&users, &new_key).await.unwrap();
    third.running.stop().await;

    // A retired secret listed badly stops the service from starting.
    for (retired, want) in [
        ("1", "VERSION:SECRET"),
        ("2:the-first-api-key-secret", "given twice"),
        ("1:short", "at least 16"),
    ] {
        let mut config = user::Config::local(
            DbArgs {
                database_url: Some(db.role_url(user::SCHEMA)),
                database_admin_url: Some(db.admin_url()),
                database_max_connections: 1,
            },
            inv.grpc,
        );
        config.api_key_secret_version = 2;
        config.api_key_retired_secrets = Some(retired.into());
        let err = user::App::build(config, CancellationToken::new())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(want), "{retired}: {err}");
    }
    inv.running.stop().await;
}

/// A token with exactly `claims` signed by `secret`.
fn signed(secret: &str, claims: serde_json::Value) -> Credentials {
    Credentials::Upbit(pb::UpbitToken {
        jwt: jwt::sign(Alg::Hs256, secret.as_bytes(), &claims),
        query: String::new(),
        alternatives: vec![],
    })
}

fn with_query(credentials: Credentials, query: &str, alternatives: &[&str]) -> Credentials {
    let Credentials::Upbit(mut t) = credentials else {
        unreachable!()
    };
    t.query = query.into();
    t.alternatives = alternatives.iter().map(|a| a.to_string()).collect();
    Credentials::Upbit(t)
}

fn sha512(text: &str) -> String {
    hex::encode(sha2::Sha512::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upbit_tokens_cannot_be_replayed_or_stretched() {
    let db = TestDb::create().await.unwrap();
    let mut e = env(&db).await;
    let id = e
        .register("frank@example.com", "s3cret-password")
        .await
        .unwrap()
        .user
        .unwrap()
        .id;
    let users = e.users.clone();
    let create = |permissions: Vec<pb::Permission>| {
        let mut users = users.clone();
        let id = id.clone();
        async move {
            users
                .create_api_key(pb::CreateApiKeyRequest {
                    user_id: id,
                    label: String::new(),
                    permissions: permissions.into_iter().map(|p| p as i32).collect(),
                    password: "s3cret-password".into(),
                })
                .await
                .map(|r| r.into_inner().api_key.unwrap())
        }
    };
    let key = create(vec![]).await.unwrap();
    let (access, secret) = (key.access_key.clone(), key.secret_key.clone());
    // Upbit's one year, and every permission by default.
    let year_ms = 365 * 86_400_000_i64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        (key.expire_at - (now_ms + year_ms)).abs() < 60_000,
        "{}",
        key.expire_at
    );
    assert_eq!(
        key.permissions().collect::<Vec<_>>(),
        [
            pb::Permission::ViewAccounts,
            pb::Permission::ViewOrders,
            pb::Permission::MakeOrders
        ]
    );
    let claims =
        |nonce: serde_json::Value| serde_json::json!({"access_key": access, "nonce": nonce});

    // A token hashing some parameters is not good for a request without any.
    let mut c = claims("q-1".into());
    c["query_hash"] = sha512("market=KRW-BTC").into();
    let err = e.verify(signed(&secret, c)).await.unwrap_err();
    assert_eq!(name(&err), Some("invalid_query_payload"));
    // ...but one hashing the empty string is.
    let mut c = claims("q-2".into());
    c["query_hash"] = sha512("").into();
    assert_eq!(e.verify(signed(&secret, c)).await.unwrap(), id);
    // Parameters need a query_hash.
    let bare = with_query(signed(&secret, claims("q-3".into())), "market=KRW-BTC", &[]);
    assert_eq!(
        name(&e.verify(bare).await.unwrap_err()),
        Some("invalid_query_payload")
    );
    // A client that hashed `+` rather than a space matches the alternative.
    let mut c = claims("q-4".into());
    c["query_hash"] = sha512("identifier=my+order").into();
    let plus = with_query(
        signed(&secret, c),
        "identifier=my order",
        &["identifier=my+order"],
    );
    assert_eq!(e.verify(plus).await.unwrap(), id);

    // Numeric nonces (the time in milliseconds, as some clients send) are
    // single use too.
    let numeric = claims(now_ms.into());
    assert_eq!(
        e.verify(signed(&secret, numeric.clone())).await.unwrap(),
        id
    );
    assert_eq!(
        name(&e.verify(signed(&secret, numeric)).await.unwrap_err()),
        Some("nonce_used")
    );
    for bad in [
        serde_json::json!(""),
        serde_json::json!(null),
        serde_json::json!({}),
        serde_json::json!("a\u{0}b"),
    ] {
        let err = e
            .verify(signed(&secret, claims(bad.clone())))
            .await
            .unwrap_err();
        assert_eq!(name(&err), Some("jwt_verification"), "{bad}");
    }

    // Time claims, when a client sends them.
    let now = chrono::Utc::now().timestamp();
    for (claim, at, ok) in [
        ("exp", now + 60, true),
        ("exp", now - 3_600, false),
        ("iat", now, true),
        ("iat", now + 3_600, false),
        ("exp", 0, false),
    ] {
        let mut c = claims(format!("t-{claim}-{at}").into());
        c[claim] = at.into();
        let got = e.verify(signed(&secret, c)).await;
        assert_eq!(got.is_ok(), ok, "{claim}={at}: {got:?}");
        if !ok {
            assert_eq!(name(&got.unwrap_err()), Some("jwt_verification"));
        }
    }

    // A nonce is remembered for as long as its key verifies: backdated two
    // days, past the old one-day window, and swept, it still cannot replay.
    let pool = sqlx::PgPool::connect(&db.role_url(user::SCHEMA))
        .await
        .unwrap();
    let old = claims("old".into());
    assert_eq!(e.verify(signed(&secret, old.clone())).await.unwrap(), id);
    sqlx::query("UPDATE api_nonces SET created_at = now() - interval '2 days'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(user::store::forget_dead_nonces(&pool).await.unwrap(), 0);
    assert_eq!(
        name(&e.verify(signed(&secret, old)).await.unwrap_err()),
        Some("nonce_used")
    );

    // Permissions travel with each verification.
    let reader = create(vec![pb::Permission::ViewOrders, pb::Permission::ViewOrders])
        .await
        .unwrap();
    let c = serde_json::json!({"access_key": reader.access_key, "nonce": "p-1"});
    let verified = e.verify_key(signed(&reader.secret_key, c)).await.unwrap();
    assert_eq!(
        verified.permissions().collect::<Vec<_>>(),
        [pb::Permission::ViewOrders]
    );
    let err = create(vec![pb::Permission::Unspecified]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An expired key verifies nothing, and its nonces are then forgotten.
    sqlx::query(
        "UPDATE api_keys SET expire_at = now() - interval '1 second' WHERE access_key = $1",
    )
    .bind(&access)
    .execute(&pool)
    .await
    .unwrap();
    let late = signed(&secret, claims("late".into()));
    assert_eq!(
        name(&e.verify(late).await.unwrap_err()),
        Some("expired_access_key")
    );
    assert!(user::store::forget_dead_nonces(&pool).await.unwrap() >= 5);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM api_nonces WHERE access_key = $1")
        .bind(&access)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    pool.close().await;
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sign_ins_waits_its_turn_or_is_told_to_retry() {
    let db = TestDb::create().await.unwrap();
    let inv = start_inventory(&db).await;
    test_support::wait_serving(inv.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    // One password hash at a time, and a short wait for a turn.
    let usr = start_user_with(&db, inv.grpc, |c| {
        c.hash_concurrency = 1;
        c.hash_wait = Duration::from_millis(100);
    })
    .await;
    test_support::wait_serving(usr.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let users = UserServiceClient::connect(format!("http://{}", usr.grpc))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let mut users = users.clone();
            tokio::spawn(async move {
                users
                    .login(pb::LoginRequest {
                        email: format!("guess{i}@example.com"),
                        password: "not the password".into(),
                    })
                    .await
            })
        })
        .collect();
    let (mut busy, mut refused) = (0, 0);
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        match (err.code(), name(&err)) {
            (Code::ResourceExhausted, Some("too_many_requests")) => busy += 1,
            (Code::Unauthenticated, Some("invalid_credentials")) => refused += 1,
            other => panic!("{other:?}: {err:?}"),
        }
    }
    assert!(
        busy > 0,
        "a burst beyond the hashing bound is told to retry"
    );
    assert!(refused > 0, "the ones that got a turn were checked");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "nobody queued for long: {:?}",
        started.elapsed()
    );
    usr.running.stop().await;
    inv.running.stop().await;
}
