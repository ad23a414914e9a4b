//! `credits.v1.CreditAuthorizer`: the hot path.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::frame::frame;
use super::pb::{self, credit_authorizer_server::CreditAuthorizer};
use super::status::{batch_status, invalid};
use super::{convert, respond};
use crate::engine::{self, Engine};
use crate::journal::{Journal, NotJournaled};
use crate::ledger::command::{Commit, CommitBatch};
use crate::ledger::{AccountId, CommitBatched, Committed, Decision, ReservationId};
use crate::outage::Outage;

pub struct AuthorizerService {
    engine: Engine,
    /// The outage journal, when `journal_categories` or `fail_open_categories` name any (Redis
    /// engine).
    journal: Option<Arc<Journal>>,
    /// Fail-open holds, when `fail_open_categories` names any.
    outage: Option<Arc<Outage>>,
}

/// How a CommitBatch was answered.
enum Batched {
    Applied(CommitBatched),
    /// Every item journaled (the outage journal, or a hold served during an outage).
    Journaled,
    /// A hold served during an outage declined the new items (they do not fit, or it closed);
    /// items it had already taken answer JOURNALED (None).
    Declined(Vec<Option<crate::ledger::Decline>>),
}

impl AuthorizerService {
    pub fn new(engine: Engine, journal: Option<Arc<Journal>>, outage: Option<Arc<Outage>>) -> Self {
        Self { engine, journal, outage }
    }

    /// The fail-open holds, if `id` is one served here during (or since) an outage.
    async fn served_here(&self, id: &ReservationId) -> Option<&Arc<Outage>> {
        let outage = self.outage.as_ref()?;
        outage.serves(id).await.then_some(outage)
    }

    /// Applies the commits journaled for `reservation` before a call on it, so that the call
    /// comes after them (a Release does not overtake them). While any of them cannot be applied
    /// (Redis still away), the call may not go to Redis either: it could arrive in the moment
    /// Redis came back, ahead of them.
    async fn journaled_first(&self, reservation: &ReservationId) -> engine::Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        if !journal.has_pending(reservation) {
            return Ok(());
        }
        let stopped = match journal.drain(&self.engine, Some(reservation)).await {
            Ok(drained) => drained.stopped,
            Err(error) => Some(error.to_string()),
        };
        if !journal.has_pending(reservation) {
            return Ok(());
        }
        Err(engine::Error::Unavailable(format!(
            "{}; commits journaled for reservation {reservation} wait for it",
            stopped.unwrap_or_else(|| "Redis cannot be reached".to_owned())
        )))
    }

    /// Remembers the category of a hold an answer named, for the journal's coverage.
    fn note(&self, reservation: &ReservationId, category: &str) {
        if let Some(journal) = &self.journal {
            journal.note(reservation, category);
        }
    }

    /// Redis answered (fail-open learns the outage is over).
    fn answered(&self) {
        if let Some(outage) = &self.outage {
            outage.redis_answered();
        }
    }

    /// Remembers a hold an answer showed, for fail-open takeovers (and learns Redis answers).
    fn note_view(&self, view: &crate::ledger::ReservationView) {
        if let Some(outage) = &self.outage {
            outage.redis_answered();
            outage.note(view);
        }
    }

    /// A CommitBatch: applied now, or, when Redis cannot be reached and the journal covers its
    /// reservation, its items journaled (`None`) — each exactly the non-final Commit under its
    /// item id that the batch applies, all or none.
    async fn commit_batch_or_journal(&self, cmd: &CommitBatch) -> engine::Result<Batched> {
        if let Some(outage) = self.served_here(&cmd.reservation).await {
            return Ok(batched(outage.commit_batch(cmd.clone(), self.engine.local_now_ms()).await?));
        }
        let applied = match self.journaled_first(&cmd.reservation).await {
            Ok(()) => self.engine.commit_batch(cmd).await,
            Err(waiting) => Err(waiting),
        };
        let cause = match applied {
            Ok(batched) => {
                self.note(&cmd.reservation, &batched.reservation.category);
                self.note_view(&batched.reservation);
                return Ok(Batched::Applied(batched));
            }
            Err(engine::Error::Unavailable(cause)) if self.journal.is_some() => cause,
            Err(error) => return Err(error),
        };
        let journal = self.journal.as_ref().expect("checked above");
        match journal.accept_all(cmd.commits().collect()).await {
            Ok(()) => Ok(Batched::Journaled),
            // Taken over by a fail-open hold while this call waited for Redis.
            Err(NotJournaled::HandedOver) if self.outage.is_some() => {
                let outage = self.outage.as_ref().expect("checked above");
                Ok(batched(outage.commit_batch(cmd.clone(), self.engine.local_now_ms()).await?))
            }
            Err(refused) => Err(not_journaled(cause, refused)),
        }
    }

    /// A Commit: applied now, or, when Redis cannot be reached and the journal covers it,
    /// journaled (`None`).
    async fn commit_or_journal(&self, cmd: &Commit) -> engine::Result<Option<Decision<Committed>>> {
        if let Some(outage) = self.served_here(&cmd.reservation).await {
            return outage.commit(cmd.clone(), self.engine.local_now_ms()).await;
        }
        let applied = match self.journaled_first(&cmd.reservation).await {
            Ok(()) => self.engine.commit(cmd).await,
            // Behind commits still journaled: this one joins them, in order.
            Err(waiting) => Err(waiting),
        };
        let cause = match applied {
            Ok(decision) => {
                if let (Decision::Done(committed), Some(journal)) = (&decision, &self.journal) {
                    if committed.held == 0 && cmd.final_commit {
                        journal.forget(&cmd.reservation);
                    } else {
                        journal.note(&cmd.reservation, &committed.reservation.category);
                    }
                    self.note_view(&committed.reservation);
                }
                return Ok(Some(decision));
            }
            Err(engine::Error::Unavailable(cause)) if self.journal.is_some() => cause,
            Err(error) => return Err(error),
        };
        let journal = self.journal.as_ref().expect("checked above");
        match journal.accept(cmd).await {
            Ok(()) => Ok(None),
            // Taken over by a fail-open hold while this call waited for Redis.
            Err(NotJournaled::HandedOver) if self.outage.is_some() => {
                let outage = self.outage.as_ref().expect("checked above");
                outage.commit(cmd.clone(), self.engine.local_now_ms()).await
            }
            Err(refused) => Err(not_journaled(cause, refused)),
        }
    }

    pub fn into_server(self) -> pb::credit_authorizer_server::CreditAuthorizerServer<Self> {
        pb::credit_authorizer_server::CreditAuthorizerServer::new(self)
    }
}

/// A CommitBatch's answer from a fail-open hold: every item journaled, or each its answer.
fn batched(items: Option<Vec<Option<crate::ledger::Decline>>>) -> Batched {
    match items {
        None => Batched::Journaled,
        Some(items) => Batched::Declined(items),
    }
}

/// What a caller hears when Redis was away (`cause`) and the journal did not take the commit.
fn not_journaled(cause: String, refused: NotJournaled) -> engine::Error {
    match refused {
        NotJournaled::NotCovered | NotJournaled::HandedOver => engine::Error::Unavailable(cause),
        NotJournaled::RequestIdReused(error) => error.into(),
        refused @ (NotJournaled::Full(_) | NotJournaled::Disk(_)) => {
            engine::Error::Unavailable(format!("{cause}; not journaled: {refused}"))
        }
    }
}

#[tonic::async_trait]
impl CreditAuthorizer for AuthorizerService {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        frame("Reserve", request, |request| async move {
            let (cmd, unit) = convert::reserve(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            // A Reserve admitted during an outage, sent again once Redis is back: its first answer
            // (Redis never saw it).
            if let Some(outage) = &self.outage
                && let Some(decision) = outage.reserved_before(&cmd).await?
            {
                return Ok(Response::new(respond::reserved(decision, unit)));
            }
            let decision = match (self.engine.reserve(&cmd).await, &self.outage) {
                (Err(engine::Error::Unavailable(cause)), Some(outage)) => {
                    // A fail-open category rides the outage out on the allowance.
                    return Ok(Response::new(respond::reserved(
                        outage.reserve(cmd.clone(), cause, self.engine.local_now_ms()).await?,
                        unit,
                    )));
                }
                (decision, _) => decision?,
            };
            self.answered();
            if let Decision::Done(reserved) = &decision {
                self.note(&reserved.reservation, cmd.category.as_str());
                if let Some(outage) = &self.outage {
                    outage.note_reserved(&cmd, reserved, self.engine.local_now_ms());
                }
            }
            Ok(Response::new(respond::reserved(decision, unit)))
        })
        .await
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        frame("Commit", request, |request| async move {
            let cmd = convert::commit(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            Ok(Response::new(match self.commit_or_journal(&cmd).await? {
                Some(decision) => respond::committed(decision),
                None => respond::journaled(),
            }))
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
            match self.commit_batch_or_journal(&cmd).await.map_err(|error| batch_status(error, &ids))? {
                Batched::Applied(batched) => Ok(Response::new(respond::committed_batch(ids, batched))),
                Batched::Journaled => Ok(Response::new(respond::batch_journaled(ids))),
                Batched::Declined(declines) => Ok(Response::new(respond::batch_declined(ids, declines))),
            }
        })
        .await
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        frame("Extend", request, |request| async move {
            let (cmd, unit) = convert::extend(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            let now = self.engine.local_now_ms();
            if let Some(outage) = self.served_here(&cmd.reservation).await {
                return Ok(Response::new(respond::extended(outage.extend(cmd, None, now).await?, unit)));
            }
            let applied = match self.journaled_first(&cmd.reservation).await {
                Ok(()) => self.engine.extend(&cmd).await,
                Err(waiting) => Err(waiting),
            };
            let decision = match (applied, &self.outage) {
                // A fail-open hold this sidecar saw is taken over: its call goes on (answered
                // from its figures here, not from Redis: nothing to note).
                (Err(engine::Error::Unavailable(cause)), Some(outage)) => {
                    let decision = outage.extend(cmd, Some(cause), now).await?;
                    return Ok(Response::new(respond::extended(decision, unit)));
                }
                (decision, _) => decision?,
            };
            match &decision {
                Decision::Done(extended) => {
                    self.note(&cmd.reservation, &extended.reservation.category);
                    self.note_view(&extended.reservation);
                }
                Decision::Declined(decline) => {
                    if let Some(view) = &decline.reservation {
                        self.note_view(view);
                    }
                }
            }
            Ok(Response::new(respond::extended(decision, unit)))
        })
        .await
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        frame("Release", request, |request| async move {
            let cmd = convert::release(request.into_inner()).map_err(invalid)?;
            if let Some(outage) = self.served_here(&cmd.reservation).await {
                let decision = outage.release(cmd, self.engine.local_now_ms()).await?;
                return Ok(Response::new(respond::released(decision)));
            }
            self.journaled_first(&cmd.reservation).await?;
            let decision = self.engine.release(&cmd).await?;
            self.answered();
            if let Some(journal) = &self.journal {
                journal.forget(&cmd.reservation);
            }
            Ok(Response::new(respond::released(decision)))
        })
        .await
    }

    async fn charge(&self, request: Request<pb::ChargeRequest>) -> Result<Response<pb::ChargeResponse>, Status> {
        frame("Charge", request, |request| async move {
            let cmd = convert::charge(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            let decision = self.engine.charge(&cmd).await?;
            self.answered();
            Ok(Response::new(respond::charged(decision)))
        })
        .await
    }

    async fn quote(&self, request: Request<pb::QuoteRequest>) -> Result<Response<pb::QuoteResponse>, Status> {
        frame("Quote", request, |request| async move {
            let cmd = convert::quote(request.into_inner(), &self.engine.rules()).map_err(invalid)?;
            let quoted = self.engine.quote(&cmd).await?;
            self.answered();
            Ok(Response::new(respond::quoted(quoted)))
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
            let balance = self.engine.balance(&account, user.as_ref()).await?;
            self.answered();
            Ok(Response::new(respond::balance(balance)))
        })
        .await
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        frame("GetReservation", request, |request| async move {
            let id = ReservationId::parse(&request.into_inner().reservation_id).map_err(invalid)?;
            if let Some(outage) = self.served_here(&id).await
                && let Some(view) = outage.reservation(&id, self.engine.local_now_ms()).await
            {
                return Ok(Response::new(pb::GetReservationResponse { reservation: Some(respond::reservation(view)) }));
            }
            self.journaled_first(&id).await?;
            let view = self.engine.reservation(&id).await?;
            self.note(&id, &view.category);
            self.note_view(&view);
            Ok(Response::new(pb::GetReservationResponse { reservation: Some(respond::reservation(view)) }))
        })
        .await
    }
}
