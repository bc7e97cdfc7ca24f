//! gRPC adapter for the user service.

use std::sync::Arc;

use exchange_proto::user::v1 as pb;
use exchange_proto::user::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::error::UserError;
use crate::service::{Permission, Tokens, Users};
use crate::store::{ApiKeyRow, UserRow};

pub struct User {
    users: Arc<Users>,
}

impl User {
    pub fn new(users: Arc<Users>) -> Self {
        Self { users }
    }
}

fn user_id(text: &str) -> Result<Uuid, UserError> {
    Uuid::parse_str(text).map_err(|_| UserError::Invalid("user_id must be a UUID".into()))
}

fn user(u: &UserRow) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        email: u.email.clone(),
        created_at: u.created_at.timestamp_millis(),
    }
}

fn tokens(t: Tokens) -> pb::TokenPair {
    pb::TokenPair {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        expires_in: t.expires_in,
        token_type: "Bearer".into(),
    }
}

fn api_key(k: &ApiKeyRow, secret: String) -> pb::ApiKey {
    pb::ApiKey {
        access_key: k.access_key.clone(),
        secret_key: secret,
        label: k.label.clone(),
        created_at: k.created_at.timestamp_millis(),
        revoked: k.revoked_at.is_some(),
        expire_at: k.expire_at.timestamp_millis(),
        permissions: k
            .permissions
            .iter()
            .filter_map(|p| Permission::from_name(p))
            .map(|p| permission_pb(p) as i32)
            .collect(),
    }
}

fn permission_pb(p: Permission) -> pb::Permission {
    match p {
        Permission::ViewAccounts => pb::Permission::ViewAccounts,
        Permission::ViewOrders => pb::Permission::ViewOrders,
        Permission::MakeOrders => pb::Permission::MakeOrders,
    }
}

/// Permissions named by a caller; unknown values are refused.
fn permissions(values: &[i32]) -> Result<Vec<Permission>, UserError> {
    values
        .iter()
        .map(|v| match pb::Permission::try_from(*v) {
            Ok(pb::Permission::ViewAccounts) => Ok(Permission::ViewAccounts),
            Ok(pb::Permission::ViewOrders) => Ok(Permission::ViewOrders),
            Ok(pb::Permission::MakeOrders) => Ok(Permission::MakeOrders),
            _ => Err(UserError::Invalid(format!("{v} is not a permission"))),
        })
        .collect()
}

#[tonic::async_trait]
impl UserService for User {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let (u, created) = self.users.register(&req.email, &req.password).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user(&u)),
            created,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let req = request.into_inner();
        let (t, u) = self.users.login(&req.email, &req.password).await?;
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(tokens(t)),
            user: Some(user(&u)),
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let t = self
            .users
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(tokens(t)),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let req = request.into_inner();
        let (user, ended) = self.users.logout(&req.access_token, req.everywhere).await?;
        Ok(Response::new(pb::LogoutResponse {
            user_id: user.to_string(),
            sessions_ended: ended,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let req = request.into_inner();
        let user = user_id(&req.user_id)?;
        if req.password.is_empty() {
            return Err(
                UserError::Invalid("password is required to make an API key".into()).into(),
            );
        }
        self.users.reauthenticate(user, &req.password).await?;
        let (row, secret) = self
            .users
            .create_api_key(user, &req.label, &permissions(&req.permissions)?)
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key(&row, secret)),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let rows = self
            .users
            .api_keys(user_id(&request.into_inner().user_id)?)
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.iter().map(|k| api_key(k, String::new())).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let req = request.into_inner();
        let row = self
            .users
            .revoke_api_key(user_id(&req.user_id)?, &req.access_key)
            .await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(api_key(&row, String::new())),
        }))
    }

    async fn verify_credentials(
        &self,
        request: Request<pb::VerifyCredentialsRequest>,
    ) -> Result<Response<pb::VerifyCredentialsResponse>, Status> {
        use pb::verify_credentials_request::Credentials;
        let response = match request.into_inner().credentials {
            Some(Credentials::AccessToken(token)) => pb::VerifyCredentialsResponse {
                user_id: self.users.verify_access_token(&token).await?.0.to_string(),
                access_key: String::new(),
                permissions: Vec::new(),
            },
            Some(Credentials::Upbit(t)) => {
                if t.alternatives.len() > 4 {
                    return Err(UserError::Invalid("at most 4 alternatives".into()).into());
                }
                let used = self
                    .users
                    .verify_upbit(&t.jwt, &t.query, &t.alternatives)
                    .await?;
                pb::VerifyCredentialsResponse {
                    user_id: used.user.to_string(),
                    access_key: used.access_key,
                    permissions: used
                        .permissions
                        .into_iter()
                        .map(|p| permission_pb(p) as i32)
                        .collect(),
                }
            }
            None => {
                return Err(
                    UserError::Token("no_authorization_token", "no credentials".into()).into(),
                );
            }
        };
        Ok(Response::new(response))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let u = self
            .users
            .user(user_id(&request.into_inner().user_id)?)
            .await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user(&u)),
        }))
    }
}
