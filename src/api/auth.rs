//! etcd Auth service. netsy authenticates clients by mTLS identity, so etcd's user/role
//! auth is never enabled: AuthStatus says so, AuthDisable is a no-op, and every other
//! call answers etcd's "authentication is not enabled".

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::errors::ApiError;
use crate::core::Replica;
use crate::proto::etcdserverpb::*;

pub struct AuthService {
    /// Only for response headers.
    replica: Arc<Replica>,
}

impl AuthService {
    pub fn new(replica: Arc<Replica>) -> Self {
        AuthService { replica }
    }

    fn header(&self) -> Option<ResponseHeader> {
        self.replica.current_header()
    }
}

/// Methods that need auth to be enabled.
macro_rules! not_enabled {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _request: Request<$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(ApiError::AuthNotEnabled.into()) })
            }
        )*
    };
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn auth_status(&self, _request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn auth_disable(&self, _request: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(AuthDisableResponse { header: self.header() }))
    }

    not_enabled! {
        auth_enable(AuthEnableRequest) -> AuthEnableResponse;
        authenticate(AuthenticateRequest) -> AuthenticateResponse;
        user_add(AuthUserAddRequest) -> AuthUserAddResponse;
        user_get(AuthUserGetRequest) -> AuthUserGetResponse;
        user_list(AuthUserListRequest) -> AuthUserListResponse;
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
        role_list(AuthRoleListRequest) -> AuthRoleListResponse;
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
    }
}
