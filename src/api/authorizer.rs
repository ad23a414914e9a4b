//! `credits.v1.CreditAuthorizer`: the hot path.

use tonic::{Request, Response, Status};

use super::convert;
use super::observe::observe;
use super::pb::{self, credit_authorizer_server::CreditAuthorizer};
use super::status::invalid;
use crate::engine::Engine;
use crate::ledger::{AccountId, Decision, ReservationId};

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
        observe("Reserve", request, |request| async move {
            let cmd = convert::reserve(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.reserve(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::ReserveResponse { outcome, decline, ..Default::default() };
            match decision {
                Decision::Done(reserved) => {
                    response.reservation_id = reserved.reservation.to_string();
                    response.amount = reserved.amount;
                    response.deadline_unix_ms = reserved.deadline_ms;
                    response.available = reserved.available;
                }
                Decision::Declined(decline) => {
                    response.amount = decline.requested;
                    response.available = decline.available;
                }
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        observe("Commit", request, |request| async move {
            let cmd = convert::commit(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.commit(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::CommitResponse { outcome, decline, ..Default::default() };
            match decision {
                Decision::Done(committed) => {
                    response.charged = committed.charged;
                    response.already_charged = committed.already_charged;
                    response.held = committed.held;
                    response.returned = committed.returned;
                    response.reservation = Some(convert::reservation(committed.reservation));
                }
                Decision::Declined(decline) => {
                    response.held = decline.held;
                    response.reservation = decline.reservation.map(|view| convert::reservation(*view));
                }
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        observe("Extend", request, |request| async move {
            let cmd = convert::extend(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.extend(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::ExtendResponse { outcome, decline, ..Default::default() };
            match decision {
                Decision::Done(extended) => {
                    response.added = extended.added;
                    response.held = extended.held;
                    response.deadline_unix_ms = extended.deadline_ms;
                    response.reservation = Some(convert::reservation(extended.reservation));
                }
                // The hold as it stands: a declined Extend leaves it unchanged, not empty.
                Decision::Declined(decline) => {
                    if let Some(view) = decline.reservation {
                        response.held = view.held;
                        response.deadline_unix_ms = view.deadline_ms;
                        response.reservation = Some(convert::reservation(*view));
                    }
                }
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        observe("Release", request, |request| async move {
            let cmd = convert::release(request.into_inner()).map_err(invalid)?;
            let decision = self.engine.release(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::ReleaseResponse { outcome, decline, ..Default::default() };
            match decision {
                Decision::Done(released) => {
                    response.returned = released.returned;
                    response.reservation = Some(convert::reservation(released.reservation));
                }
                Decision::Declined(decline) => {
                    response.reservation = decline.reservation.map(|view| convert::reservation(*view))
                }
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn charge(&self, request: Request<pb::ChargeRequest>) -> Result<Response<pb::ChargeResponse>, Status> {
        observe("Charge", request, |request| async move {
            let cmd = convert::charge(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.charge(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::ChargeResponse { outcome, decline, ..Default::default() };
            match decision {
                Decision::Done(charged) => {
                    response.reservation_id = charged.reservation.map(|id| id.to_string()).unwrap_or_default();
                    response.charged = charged.charged;
                    response.already_charged = charged.already_charged;
                    response.available = charged.available;
                }
                Decision::Declined(decline) => response.available = decline.available,
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn quote(&self, request: Request<pb::QuoteRequest>) -> Result<Response<pb::QuoteResponse>, Status> {
        observe("Quote", request, |request| async move {
            let cmd = convert::quote(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let quoted = self.engine.quote(&cmd).await?;
            Ok(Response::new(pb::QuoteResponse {
                fits: quoted.fits,
                outcome: convert::quote_outcome(quoted.decline),
                amount: quoted.amount,
                available: quoted.available,
                user_remaining: quoted.user_remaining,
                units_that_fit: quoted.units_that_fit,
            }))
        })
        .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        observe("GetBalance", request, |request| async move {
            let request = request.into_inner();
            let account = AccountId::parse(&request.account_id).map_err(invalid)?;
            let user = convert::optional_user(&request.user_id).map_err(invalid)?;
            let balance = self.engine.balance(&account, user.as_ref()).await?;
            let user = balance.user.unwrap_or_else(|| crate::ledger::UserView {
                user: String::new(),
                limit: None,
                used: 0,
                remaining: None,
            });
            Ok(Response::new(pb::GetBalanceResponse {
                totals: Some(convert::totals(balance.totals)),
                cycle: Some(convert::cycle(balance.cycle)),
                user_limit: user.limit,
                user_used: user.used,
                user_remaining: user.remaining,
            }))
        })
        .await
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        observe("GetReservation", request, |request| async move {
            let id = ReservationId::parse(&request.into_inner().reservation_id).map_err(invalid)?;
            let view = self.engine.reservation(&id).await?;
            Ok(Response::new(pb::GetReservationResponse { reservation: Some(convert::reservation(view)) }))
        })
        .await
    }
}
