//! `credits.v1.CreditAuthorizer`: the hot path.

use tonic::{Request, Response, Status};

use super::frame::frame;
use super::pb::{self, credit_authorizer_server::CreditAuthorizer};
use super::status::{batch_status, invalid};
use super::{convert, respond};
use crate::engine::Engine;
use crate::ledger::{AccountId, ReservationId};

pub struct AuthorizerService {
    engine: Engine,
}

impl AuthorizerService {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    pub fn into_server(self) -> pb::credit_authorizer_server::CreditAuthorizerServer<Self> {
        pb::credit_authorizer_server::CreditAuthorizerServer::new(self)
    }
}

#[tonic::async_trait]
impl CreditAuthorizer for AuthorizerService {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        frame("Reserve", request, |request| async move {
            let (cmd, unit) = convert::reserve(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::reserved(self.engine.reserve(&cmd).await?, unit)))
        })
        .await
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        frame("Commit", request, |request| async move {
            let cmd = convert::commit(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::committed(self.engine.commit(&cmd).await?)))
        })
        .await
    }

    async fn commit_batch(
        &self,
        request: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        frame("CommitBatch", request, |request| async move {
            let cmd = convert::commit_batch(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            let ids: Vec<String> = cmd.items.iter().map(|item| item.id.as_str().to_owned()).collect();
            let batched = self.engine.commit_batch(&cmd).await.map_err(|error| batch_status(error, &ids))?;
            Ok(Response::new(respond::committed_batch(ids, batched)))
        })
        .await
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        frame("Extend", request, |request| async move {
            let (cmd, unit) = convert::extend(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::extended(self.engine.extend(&cmd).await?, unit)))
        })
        .await
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        frame("Release", request, |request| async move {
            let cmd = convert::release(request.into_inner()).map_err(invalid)?;
            Ok(Response::new(respond::released(self.engine.release(&cmd).await?)))
        })
        .await
    }

    async fn charge(&self, request: Request<pb::ChargeRequest>) -> Result<Response<pb::ChargeResponse>, Status> {
        frame("Charge", request, |request| async move {
            let cmd = convert::charge(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::charged(self.engine.charge(&cmd).await?)))
        })
        .await
    }

    async fn quote(&self, request: Request<pb::QuoteRequest>) -> Result<Response<pb::QuoteResponse>, Status> {
        frame("Quote", request, |request| async move {
            let cmd = convert::quote(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::quoted(self.engine.quote(&cmd).await?)))
        })
        .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        frame("GetBalance", request, |request| async move {
            let request = request.into_inner();
            let account = AccountId::parse(&request.account_id).map_err(invalid)?;
            let user = convert::optional_user(&request.user_id).map_err(invalid)?;
            Ok(Response::new(respond::balance(self.engine.balance(&account, user.as_ref()).await?)))
        })
        .await
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        frame("GetReservation", request, |request| async move {
            let id = ReservationId::parse(&request.into_inner().reservation_id).map_err(invalid)?;
            let view = self.engine.reservation(&id).await?;
            Ok(Response::new(pb::GetReservationResponse { reservation: Some(respond::reservation(view)) }))
        })
        .await
    }
}
