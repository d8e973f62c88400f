//! etcd Cluster service over netsy's membership (see `core::members`): pods join by
//! themselves when they start, so MemberAdd is not offered (scale the StatefulSet);
//! MemberRemove, MemberPromote and MemberList act on the Raft membership.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::errors::ApiError;
use crate::core::Replica;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};

pub struct ClusterService {
    replica: Arc<Replica>,
}

impl ClusterService {
    pub fn new(replica: Arc<Replica>) -> Self {
        ClusterService { replica }
    }

    /// Every member, one per pod name (its current incarnation), with its stable id.
    fn members(&self) -> Vec<Member> {
        let mut out: Vec<Member> = Vec::new();
        for m in self.replica.members() {
            if out.iter().any(|o| o.id == m.node.member_id) {
                continue; // an old incarnation being replaced
            }
            out.push(Member {
                id: m.node.member_id,
                name: m.node.name.clone(),
                peer_urls: vec![m.node.peer_url.clone()],
                client_urls: vec![m.node.client_url.clone()],
                is_learner: !m.voter,
            });
        }
        out
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(ApiError::NotCapable.into())
    }

    /// Removes a member (scale-down). A pod that comes back later joins again by itself.
    async fn member_remove(&self, request: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.replica.check_member(id)?;
        self.replica.remove_member(id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.replica.cluster_header(),
            members: self.members(),
        }))
    }

    async fn member_update(&self, request: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.replica.check_member(request.into_inner().id)?;
        Err(ApiError::NotCapable.into())
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.replica.linearizable_read().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.replica.cluster_header(),
            members: self.members(),
        }))
    }

    /// Learners are promoted automatically once caught up; promoting one finishes its
    /// join now (waiting for it to catch up).
    async fn member_promote(&self, request: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        self.replica.promote(request.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.replica.cluster_header(),
            members: self.members(),
        }))
    }
}
