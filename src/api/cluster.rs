//! etcd Cluster service. A single-member netsy lists itself; membership changes arrive
//! with the multi-node cluster and answer etcd's errors until then.

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

    fn members(&self) -> Vec<Member> {
        let c = &self.node.config;
        vec![Member {
            id: self.node.identity.member_id,
            name: c.node_id.clone(),
            peer_urls: vec![c.advertise_peer.clone()],
            client_urls: vec![c.advertise_client.clone()],
            is_learner: false,
        }]
    }

    fn check_known(&self, id: u64) -> Result<(), ApiError> {
        if id == self.node.identity.member_id {
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

    async fn member_remove(&self, request: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_known(request.into_inner().id)?;
        Err(ApiError::NotCapable.into())
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

    async fn member_promote(&self, request: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_known(request.into_inner().id)?;
        Err(ApiError::MemberNotLearner.into())
    }
}
