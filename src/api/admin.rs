//! `credits.v1.CreditAdmin`: plans, grants, trials, user limits, and account reads.

use tonic::{Request, Response, Status};

use super::convert;
use super::observe::observe;
use super::pb::{self, credit_admin_server::CreditAdmin};
use super::status::invalid;
use crate::engine::Engine;
use crate::ledger::ReservationId;
use crate::ledger::model::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use crate::ledger::{AccountId, Decision, Error};
use crate::settle::store::{Store, StoreError};

pub struct AdminService {
    engine: Engine,
    /// The durable ledger, for usage and settled reservations.
    store: Option<Store>,
}

impl AdminService {
    pub fn new(engine: Engine, store: Option<Store>) -> Self {
        Self { engine, store }
    }

    fn store(&self) -> Result<&Store, Status> {
        self.store.as_ref().ok_or_else(|| {
            let reason = "usage comes from the durable ledger, and no database is configured";
            super::status::to_status(crate::engine::Error::NotConfigured(reason.into()))
        })
    }

    pub fn into_server(self) -> pb::credit_admin_server::CreditAdminServer<Self> {
        pb::credit_admin_server::CreditAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl CreditAdmin for AdminService {
    async fn set_plan(&self, request: Request<pb::SetPlanRequest>) -> Result<Response<pb::SetPlanResponse>, Status> {
        observe("SetPlan", request, |request| async move {
            let cmd = convert::set_plan(request.into_inner()).map_err(invalid)?;
            let decision = self.engine.set_plan(&cmd).await?;
            let (outcome, _) = convert::outcome(&decision);
            let mut response = pb::SetPlanResponse { outcome, ..Default::default() };
            if let Decision::Done(set) = decision {
                response.cycle = Some(convert::cycle(set.cycle));
                response.totals = Some(convert::totals(set.totals));
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn grant(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        observe("Grant", request, |request| async move {
            let cmd = convert::grant(request.into_inner()).map_err(invalid)?;
            let decision = self.engine.grant(&cmd).await?;
            Ok(Response::new(granted(&decision, |outcome, granted| pb::GrantResponse {
                outcome,
                lot_id: granted.map_or(0, |g| g.lot),
                expires_unix_ms: granted.map_or(0, |g| g.expires_ms),
                totals: granted.map(|g| convert::totals(g.totals)),
            })))
        })
        .await
    }

    async fn start_trial(
        &self,
        request: Request<pb::StartTrialRequest>,
    ) -> Result<Response<pb::StartTrialResponse>, Status> {
        observe("StartTrial", request, |request| async move {
            let cmd = convert::start_trial(request.into_inner(), self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.start_trial(&cmd).await?;
            let (outcome, decline) = convert::outcome(&decision);
            let mut response = pb::StartTrialResponse { outcome, decline, ..Default::default() };
            if let Decision::Done(granted) = decision {
                response.lot_id = granted.lot;
                response.expires_unix_ms = granted.expires_ms;
                response.totals = Some(convert::totals(granted.totals));
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn set_user_limit(
        &self,
        request: Request<pb::SetUserLimitRequest>,
    ) -> Result<Response<pb::SetUserLimitResponse>, Status> {
        observe("SetUserLimit", request, |request| async move {
            let cmd = convert::set_user_limit(request.into_inner()).map_err(invalid)?;
            let decision = self.engine.set_user_limit(&cmd).await?;
            let (outcome, _) = convert::outcome(&decision);
            let mut response = pb::SetUserLimitResponse { outcome, ..Default::default() };
            if let Decision::Done(user) = decision {
                response.limit = user.limit;
                response.used = user.used;
                response.remaining = user.remaining;
            }
            Ok(Response::new(response))
        })
        .await
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        observe("GetAccount", request, |request| async move {
            let id = AccountId::parse(&request.into_inner().account_id).map_err(invalid)?;
            let view = self.engine.account(&id).await?;
            Ok(Response::new(pb::GetAccountResponse {
                account_id: view.id.to_string(),
                plan: view.plan.map(convert::plan),
                cycle: Some(convert::cycle(view.cycle)),
                totals: Some(convert::totals(view.totals)),
                lots: view.lots.into_iter().map(convert::lot).collect(),
                trial_used: view.trial_used,
                user_limits: view.users.into_iter().map(convert::user_limit).collect(),
                open_reservations: view.open_reservations,
            }))
        })
        .await
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        observe("ListReservations", request, |request| async move {
            let request = request.into_inner();
            let account = AccountId::parse(&request.account_id).map_err(invalid)?;
            let state = convert::state_filter(request.state).map_err(invalid)?;
            let page_size = match request.page_size as usize {
                0 => LIST_PAGE_DEFAULT,
                size if size <= LIST_PAGE_MAX => size,
                _ => {
                    return Err(invalid(Error::invalid("page_size", format!("must be at most {LIST_PAGE_MAX}"))));
                }
            };
            let before = match request.page_token.as_str() {
                "" => None,
                token => Some(
                    token
                        .parse::<u64>()
                        .map_err(|_| invalid(Error::invalid("page_token", "not a token from a previous page")))?,
                ),
            };
            if request.settled {
                let state = state.map(crate::ledger::wire::state_name);
                let rows = self.store()?.reservations(&account, state, page_size, before).await.map_err(unavailable)?;
                let next = (rows.len() == page_size).then(|| rows.last().map(|row| row.seq.to_string())).flatten();
                return Ok(Response::new(pb::ListReservationsResponse {
                    reservations: rows.into_iter().map(|row| convert::settled_reservation(&account, row)).collect(),
                    next_page_token: next.unwrap_or_default(),
                }));
            }
            let (page, next) = self.engine.list_reservations(&account, state, page_size, before).await?;
            Ok(Response::new(pb::ListReservationsResponse {
                reservations: page.into_iter().map(convert::reservation).collect(),
                next_page_token: next.map(|seq| seq.to_string()).unwrap_or_default(),
            }))
        })
        .await
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        observe("GetUsage", request, |request| async move {
            let request = request.into_inner();
            let account = AccountId::parse(&request.account_id).map_err(invalid)?;
            let cycle = match request.cycle_start_unix_ms {
                0 => None,
                at => Some(crate::ledger::check_instant("cycle_start_unix_ms", at).map_err(invalid)?),
            };
            let reservation = match request.reservation_id.as_str() {
                "" => None,
                id => {
                    let id = ReservationId::parse(id).map_err(invalid)?;
                    if id.account != account {
                        return Err(invalid(Error::invalid("reservation_id", "belongs to another account")));
                    }
                    Some(id)
                }
            };
            let store = self.store()?;
            let rows = store.usage(&account, cycle).await.map_err(unavailable)?;
            let line_items = match &reservation {
                Some(id) => store.line_items(&account, id.seq).await.map_err(unavailable)?,
                None => Vec::new(),
            };
            Ok(Response::new(convert::usage(rows, line_items)))
        })
        .await
    }
}

/// The durable store could not answer (the caller may retry), or holds what we cannot read.
fn unavailable(error: StoreError) -> Status {
    let error = match error {
        StoreError::Corrupt { .. } => crate::engine::Error::Internal(error.to_string()),
        StoreError::Database(_) | StoreError::Migrate(_) => crate::engine::Error::Unavailable(error.to_string()),
    };
    super::status::to_status(error)
}

/// Builds a Grant/StartTrial response from a decision.
fn granted<R>(
    decision: &Decision<crate::ledger::Granted>,
    build: impl FnOnce(i32, Option<&crate::ledger::Granted>) -> R,
) -> R {
    let (outcome, _) = convert::outcome(decision);
    match decision {
        Decision::Done(granted) => build(outcome, Some(granted)),
        Decision::Declined(_) => build(outcome, None),
    }
}
