//! `credits.v1.CreditAdmin`: plans, grants, trials, user limits, and account reads.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tonic::{Request, Response, Status};

use super::frame::frame;
use super::pb::{self, credit_admin_server::CreditAdmin};
use super::status::invalid;
use super::{convert, respond};
use crate::alerts::Alerts;
use crate::engine::Engine;
use crate::ledger::AccountId;
use crate::settle::store::{AlertRow, Store, StoreError};

/// WatchAccount streams a sidecar serves at once. They hold no `concurrency_max` permit (a
/// stream lives for minutes), so they have their own bound.
pub const WATCH_STREAMS_MAX: usize = 64;

/// How long a WatchAccount stream may leave a message unread before it is ended.
const WATCH_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A WatchAccount stream's messages.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAccountResponse, Status>> + Send>>;

pub struct AdminService {
    engine: Engine,
    /// The durable ledger, for usage and settled reservations.
    store: Option<Store>,
    watches: Arc<Semaphore>,
    /// Turns true when the server stops taking calls: WatchAccount streams end.
    closing: watch::Receiver<bool>,
    /// The alerts this sidecar records, for WatchAccount streams.
    alerts: Arc<Alerts>,
}

impl AdminService {
    pub fn new(engine: Engine, store: Option<Store>, closing: watch::Receiver<bool>, alerts: Arc<Alerts>) -> Self {
        Self { engine, store, watches: Arc::new(Semaphore::new(WATCH_STREAMS_MAX)), closing, alerts }
    }

    fn store(&self) -> Result<&Store, Status> {
        self.store.as_ref().ok_or_else(|| {
            let reason = "this call reads or writes the durable ledger, and no database is configured";
            super::status::to_status(crate::engine::Error::NotConfigured(reason.into()))
        })
    }

    pub fn into_server(self) -> pb::credit_admin_server::CreditAdminServer<Self> {
        pb::credit_admin_server::CreditAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl CreditAdmin for AdminService {
    type WatchAccountStream = WatchStream;

    async fn set_alert_thresholds(
        &self,
        request: Request<pb::SetAlertThresholdsRequest>,
    ) -> Result<Response<pb::SetAlertThresholdsResponse>, Status> {
        frame("SetAlertThresholds", request, |request| async move {
            let (account, thresholds) =
                convert::alert_thresholds(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            let store = self.store()?;
            // Thresholds of an account that does not exist would never fire: a typo, refused.
            self.engine.account(&account).await?;
            store.set_alert_thresholds(&account, &thresholds).await.map_err(unavailable)?;
            Ok(Response::new(pb::SetAlertThresholdsResponse {
                thresholds: thresholds.iter().map(respond::threshold).collect(),
            }))
        })
        .await
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        frame("ListAlerts", request, |request| async move {
            let (account, size, before) = convert::alerts_query(request.into_inner()).map_err(invalid)?;
            let store = self.store()?;
            let thresholds = store.alert_thresholds(&account).await.map_err(unavailable)?;
            let page = store.alerts(&account, before.as_ref(), size).await.map_err(unavailable)?;
            let deliveries = store.deliveries(&page).await.map_err(unavailable)?;
            Ok(Response::new(respond::alerts(&thresholds, &page, &deliveries, size)))
        })
        .await
    }

    async fn watch_account(
        &self,
        request: Request<pb::WatchAccountRequest>,
    ) -> Result<Response<Self::WatchAccountStream>, Status> {
        frame("WatchAccount", request, |request| async move {
            let (account, every) = convert::watch(request.into_inner()).map_err(invalid)?;
            let slot = self
                .watches
                .clone()
                .try_acquire_owned()
                .map_err(|_| super::status::too_many_streams(WATCH_STREAMS_MAX))?;
            // The first read answers the call: an unknown account is NOT_FOUND, not a stream.
            let first = respond::account(self.engine.account(&account).await?);
            let (sender, receiver) = mpsc::channel(2);
            let watched = Watched {
                engine: self.engine.clone(),
                account,
                every,
                sender,
                closing: self.closing.clone(),
                alerts: self.alerts.subscribe(),
            };
            tokio::spawn(async move {
                let _slot = slot;
                watched.run(first).await;
            });
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|message| (message, receiver))
            });
            Ok(Response::new(Box::pin(stream) as WatchStream))
        })
        .await
    }

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

/// One WatchAccount stream: the account read every `every`, sent when it changed.
struct Watched {
    engine: Engine,
    account: AccountId,
    every: Duration,
    sender: mpsc::Sender<Result<pb::WatchAccountResponse, Status>>,
    closing: watch::Receiver<bool>,
    alerts: broadcast::Receiver<Arc<AlertRow>>,
}

/// What woke a watch.
enum Wake {
    Tick,
    Alert(Arc<AlertRow>),
    Closing,
    Gone,
}

impl Watched {
    async fn run(mut self, first: pb::GetAccountResponse) {
        let mut last = first;
        if !self.send(Ok(update(&last, Vec::new()))).await {
            return;
        }
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let fired = match self.wake(&mut ticker).await {
                Wake::Gone => return,
                Wake::Tick => Vec::new(),
                Wake::Alert(alert) => vec![respond::alert(&alert)],
                Wake::Closing => {
                    self.send_last(super::status::shutting_down()).await;
                    return;
                }
            };
            match self.engine.account(&self.account).await {
                Ok(view) => {
                    let now = respond::account(view);
                    if (now != last || !fired.is_empty()) && !self.send(Ok(update(&now, fired))).await {
                        return;
                    }
                    last = now;
                }
                Err(error) => {
                    self.send(Err(super::status::to_status(error))).await;
                    return;
                }
            }
        }
    }

    /// Waits for the next reason to look: the interval, an alert of this account, the shutdown,
    /// or the caller gone.
    async fn wake(&mut self, ticker: &mut tokio::time::Interval) -> Wake {
        loop {
            return tokio::select! {
                _ = ticker.tick() => Wake::Tick,
                () = self.sender.closed() => Wake::Gone,
                _ = self.closing.wait_for(|closing| *closing) => Wake::Closing,
                alert = self.alerts.recv() => match alert {
                    Ok(alert) if alert.account == self.account.as_str() => Wake::Alert(alert),
                    // Another account's, or some missed (this stream lagged): nothing to tell.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    // The sidecar is going away (its alerts with it).
                    Err(broadcast::error::RecvError::Closed) => Wake::Closing,
                },
            };
        }
    }

    /// False when the caller has gone, or stopped reading for [`WATCH_SEND_TIMEOUT`] (a stream
    /// that does not drain keeps no slot), or the sidecar is stopping meanwhile.
    async fn send(&mut self, message: Result<pb::WatchAccountResponse, Status>) -> bool {
        let mut closing = self.closing.clone();
        tokio::select! {
            sent = tokio::time::timeout(WATCH_SEND_TIMEOUT, self.sender.send(message)) => matches!(sent, Ok(Ok(()))),
            _ = closing.wait_for(|closing| *closing) => false,
        }
    }

    /// The last message, at shutdown: given a moment, not raced against the shutdown itself.
    async fn send_last(&self, status: Status) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sender.send(Err(status))).await;
    }
}

fn update(account: &pb::GetAccountResponse, alerts: Vec<pb::Alert>) -> pb::WatchAccountResponse {
    pb::WatchAccountResponse {
        at_unix_ms: chrono::Utc::now().timestamp_millis(),
        account: Some(account.clone()),
        alerts,
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
