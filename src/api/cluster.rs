//! etcd Cluster service over netsy's membership (see `server::membership`): pods join by
//! themselves when they start, so MemberAdd is not offered (scale the StatefulSet);
//! MemberRemove, MemberPromote and MemberList act on the Raft membership.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::errors::ApiError;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::server::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    /// Every member, one per pod name (its current incarnation), with its stable id.
    fn members(&self) -> Vec<Member> {
        let mut out: Vec<Member> = Vec::new();
        for m in self.node.members() {
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

    fn check_known(&self, id: u64) -> Result<(), ApiError> {
        if self.node.members().iter().any(|m| m.node.member_id == id) {
            Ok(())
        } else {
            Err(ApiError::MemberNotFound)
        }
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
        self.check_known(id)?;
        self.node.remove_member(id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.node.current_header(),
            members: self.members(),
        }))
    }

    async fn member_update(&self, request: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_known(request.into_inner().id)?;
        Err(ApiError::NotCapable.into())
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.linearizable_read().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.node.current_header(),
            members: self.members(),
        }))
    }

    /// Learners are promoted automatically once caught up; promoting one finishes its
    /// join now (waiting for it to catch up).
    async fn member_promote(&self, request: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.check_known(id)?;
        let members = self.node.members();
        let Some(learner) = members.iter().find(|m| m.node.member_id == id && !m.voter) else {
            return Err(ApiError::MemberNotLearner.into());
        };
        self.node.join(learner.raft_id, learner.node.clone()).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.node.current_header(),
            members: self.members(),
        }))
    }
}
