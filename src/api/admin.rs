//! `credits.v1.CreditAdmin`: plans, grants, trials, user limits, and account reads.

use tonic::{Request, Response, Status};

use super::frame::frame;
use super::pb::{self, credit_admin_server::CreditAdmin};
use super::status::invalid;
use super::{convert, respond};
use crate::engine::Engine;
use crate::ledger::AccountId;
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
        frame("SetPlan", request, |request| async move {
            let cmd = convert::set_plan(request.into_inner()).map_err(invalid)?;
            Ok(Response::new(respond::plan_set(self.engine.set_plan(&cmd).await?)))
        })
        .await
    }

    async fn grant(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        frame("Grant", request, |request| async move {
            let cmd = convert::grant(request.into_inner()).map_err(invalid)?;
            Ok(Response::new(respond::granted(self.engine.grant(&cmd).await?)))
        })
        .await
    }

    async fn start_trial(
        &self,
        request: Request<pb::StartTrialRequest>,
    ) -> Result<Response<pb::StartTrialResponse>, Status> {
        frame("StartTrial", request, |request| async move {
            let cmd = convert::start_trial(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::trial_started(self.engine.start_trial(&cmd).await?)))
        })
        .await
    }

    async fn set_user_limit(
        &self,
        request: Request<pb::SetUserLimitRequest>,
    ) -> Result<Response<pb::SetUserLimitResponse>, Status> {
        frame("SetUserLimit", request, |request| async move {
            let cmd = convert::set_user_limit(request.into_inner()).map_err(invalid)?;
            Ok(Response::new(respond::user_limit_set(self.engine.set_user_limit(&cmd).await?)))
        })
        .await
    }

    async fn set_category_budget(
        &self,
        request: Request<pb::SetCategoryBudgetRequest>,
    ) -> Result<Response<pb::SetCategoryBudgetResponse>, Status> {
        frame("SetCategoryBudget", request, |request| async move {
            let cmd = convert::set_category_budget(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(respond::category_budget_set(self.engine.set_category_budget(&cmd).await?)))
        })
        .await
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        frame("GetAccount", request, |request| async move {
            let id = AccountId::parse(&request.into_inner().account_id).map_err(invalid)?;
            Ok(Response::new(respond::account(self.engine.account(&id).await?)))
        })
        .await
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        frame("ListReservations", request, |request| async move {
            let query = convert::list_query(request.into_inner()).map_err(invalid)?;
            let (account, state, size, before) = (&query.account, query.state, query.page_size, query.before);
            if query.settled {
                let state = state.map(crate::ledger::wire::state_name);
                let rows = self.store()?.reservations(account, state, size, before).await.map_err(unavailable)?;
                return Ok(Response::new(respond::settled_page(account, rows, size)));
            }
            let page = self.engine.list_reservations(account, state, size, before).await?;
            Ok(Response::new(respond::page(page)))
        })
        .await
    }

    async fn get_account_history(
        &self,
        request: Request<pb::GetAccountHistoryRequest>,
    ) -> Result<Response<pb::GetAccountHistoryResponse>, Status> {
        frame("GetAccountHistory", request, |request| async move {
            let query = convert::history_query(request.into_inner()).map_err(invalid)?;
            let store = self.store()?;
            let events = store.history(&query.account, query.before, query.page_size).await.map_err(unavailable)?;
            if events.is_empty() && !store.knows_account(&query.account).await.map_err(unavailable)? {
                return Err(super::status::to_status(crate::ledger::Error::AccountNotFound(query.account).into()));
            }
            Ok(Response::new(super::history::page(events, query.page_size)))
        })
        .await
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        frame("GetUsage", request, |request| async move {
            let query = convert::usage_query(request.into_inner()).map_err(invalid)?;
            let store = self.store()?;
            let rows = store.usage(&query.account, query.cycle).await.map_err(unavailable)?;
            let line_items = match &query.reservation {
                Some(id) => store.line_items(&query.account, id.seq).await.map_err(unavailable)?,
                None => Vec::new(),
            };
            let budgets = store.category_budgets(&query.account).await.map_err(unavailable)?;
            Ok(Response::new(respond::usage(rows, line_items, budgets)))
        })
        .await
    }
}

/// The durable store could not answer (the caller may retry), or holds what we cannot read.
fn unavailable(error: StoreError) -> Status {
    let error = match error {
        StoreError::Corrupt { .. } | StoreError::Schema(_) => crate::engine::Error::Internal(error.to_string()),
        StoreError::Database(_) | StoreError::Migrate(_) => crate::engine::Error::Unavailable(error.to_string()),
    };
    super::status::to_status(error)
}
