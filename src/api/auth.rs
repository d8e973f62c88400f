//! etcd Auth service. netsy authenticates clients by mTLS identity, so etcd's user/role
//! auth is never enabled and there are never users or roles: calls are answered as etcd
//! answers them in that state (AuthStatus disabled at auth revision 1, AuthDisable a
//! no-op, AuthEnable "root user does not exist", empty user and role lists, "user name
//! not found" / "role name not found" for any named one), and creating a user or role,
//! which netsy cannot honour, is refused with "authentication is not enabled".

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

/// Methods answered with `$err` (an `ApiError`).
macro_rules! refused {
    ($err:expr; $($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _request: Request<$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err($err.into()) })
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
            // A new etcd's auth store starts at revision 1; netsy's never changes.
            auth_revision: 1,
        }))
    }

    async fn auth_disable(&self, _request: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(AuthDisableResponse { header: self.header() }))
    }

    async fn user_list(&self, _request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: Vec::new(),
        }))
    }

    async fn role_list(&self, _request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: Vec::new(),
        }))
    }

    refused! { ApiError::RootUserNotExist;
        auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    }

    refused! { ApiError::AuthNotEnabled;
        authenticate(AuthenticateRequest) -> AuthenticateResponse;
        user_add(AuthUserAddRequest) -> AuthUserAddResponse;
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    }

    refused! { ApiError::UserNotFound;
        user_get(AuthUserGetRequest) -> AuthUserGetResponse;
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    }

    refused! { ApiError::RoleNotFound;
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
    }
}
