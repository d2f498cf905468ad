//! `GET /v1/stream`: the realtime events a token may see, as Server-Sent Events, for clients
//! without a Pusher library. The projector's realtime worker fans every realtime event out on
//! core NATS (`{prefix}.{tenant_id}`); this process keeps one subscription ([`Hub`]), a short
//! window of recent events for `Last-Event-ID` resume, and a broadcast to every open stream.
//!
//! Each SSE event is `event: {name}`, `id: {event_id}`, `data: {the Pusher event's data}`.
//! A client that reconnects with `Last-Event-ID` gets what it missed while the window still
//! holds that id; otherwise (or when it fell too far behind) it gets `event: reset` and
//! should reload through the query API.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use events::access::Principal;
use events::http::{AuthUser, Problem};
use events::realtime::{Channel, RealtimeEvent};
use futures::StreamExt;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::AppState;

/// Events kept for resume, at most.
const WINDOW_EVENTS: usize = 10_000;
/// How long an event is kept for resume.
const WINDOW: Duration = Duration::from_secs(300);
/// Events a slow stream may fall behind before it is told to reset.
const LAG: usize = 4096;
/// How long a stream trusts that its customer does not take part in a thread.
const NO_FOR: Duration = Duration::from_secs(2);

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// A realtime event as this process received it.
#[derive(Debug)]
struct Received {
    /// Arrival order in this process.
    seq: u64,
    /// When it arrived.
    at: Instant,
    /// The event; `None` marks a gap (the NATS connection dropped, so events may have been
    /// missed: every stream is told to reset).
    event: Option<RealtimeEvent>,
}

/// The recent window and the broadcast to open streams.
#[derive(Debug)]
pub struct Hub {
    /// Live events for open streams.
    live: broadcast::Sender<Arc<Received>>,
    /// The resume window, oldest first, and the next arrival number.
    recent: Mutex<(VecDeque<Arc<Received>>, u64)>,
    /// Set when the server shuts down: open streams end, so a graceful shutdown does not
    /// wait for clients that never hang up.
    closing: tokio::sync::watch::Sender<bool>,
    /// Open streams per user, and how many one user may hold: each holds a subscription and
    /// checks every event against its viewer, so one token holding hundreds slowed every
    /// other tenant's reads.
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// The cap.
    per_user: usize,
}

/// One user's claim on an open stream; dropping it (the stream ended) gives it back.
struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(n) = open.get_mut(&self.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.user);
                }
            }
        }
    }
}

impl Hub {
    /// A hub with nothing received yet.
    pub fn new(per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            live: broadcast::channel(LAG).0,
            recent: Mutex::new((VecDeque::new(), 0)),
            closing: tokio::sync::watch::channel(false).0,
            open: Arc::new(Mutex::new(HashMap::new())),
            per_user: per_user.max(1),
        })
    }

    /// A slot for one more stream of `user`, unless they hold as many as allowed.
    fn claim(&self, user: String) -> Option<StreamSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(user.clone()).or_insert(0);
        if *n >= self.per_user {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            user,
        })
    }

    /// Ends every open stream (and those opened later).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Subscribes to `{prefix}.>` on NATS and feeds the hub, reconnecting for ever; query-api
    /// serves everything else without NATS.
    pub fn follow(self: &Arc<Self>, nats_url: String, prefix: String) {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let outcome = async {
                    let watcher = hub.clone();
                    let url = events::bus::NatsUrl::parse(&nats_url);
                    let (options, address) = url.options();
                    let client = options
                        .event_callback(move |event| {
                            let hub = watcher.clone();
                            async move {
                                // Core NATS keeps nothing for a disconnected subscriber.
                                if matches!(event, async_nats::Event::Disconnected) {
                                    hub.gap();
                                }
                            }
                        })
                        .connect(address)
                        .await?;
                    let mut subscription = client.subscribe(format!("{prefix}.>")).await?;
                    tracing::info!(subject = %format!("{prefix}.>"), "following realtime events");
                    while let Some(message) = subscription.next().await {
                        match serde_json::from_slice::<RealtimeEvent>(&message.payload) {
                            Ok(event) => hub.receive(event),
                            Err(e) => tracing::warn!(error = %e, "not a realtime event"),
                        }
                    }
                    Ok::<_, async_nats::Error>(())
                }
                .await;
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "realtime events unavailable; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Records that events may have been missed: the window no longer vouches for what
    /// came before, and open streams reset.
    pub fn gap(&self) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let (window, next) = &mut *recent;
        window.clear();
        let marker = Arc::new(Received {
            seq: *next,
            at: Instant::now(),
            event: None,
        });
        *next += 1;
        let _ = self.live.send(marker);
    }

    /// Records an event and hands it to open streams.
    pub fn receive(&self, event: RealtimeEvent) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let (window, next) = &mut *recent;
        let received = Arc::new(Received {
            seq: *next,
            at: Instant::now(),
            event: Some(event),
        });
        *next += 1;
        window.push_back(received.clone());
        while window.len() > WINDOW_EVENTS
            || window.front().is_some_and(|r| r.at.elapsed() > WINDOW)
        {
            window.pop_front();
        }
        // Sent under the lock, so a stream that subscribed and read the window in one
        // critical section sees each event exactly once.
        let _ = self.live.send(received);
    }

    /// A live subscription and what the window holds after `last_id`: `Some(events)` when
    /// the window holds `last_id` (or none was given: nothing to replay), `None` when it
    /// does not (the client must reload).
    fn subscribe(
        &self,
        last_id: Option<&str>,
    ) -> (
        broadcast::Receiver<Arc<Received>>,
        Option<Vec<Arc<Received>>>,
    ) {
        let Ok(recent) = self.recent.lock() else {
            return (self.live.subscribe(), None);
        };
        let live = self.live.subscribe();
        let replay = match last_id {
            None => Some(Vec::new()),
            Some(id) => recent
                .0
                .iter()
                .position(|r| r.event.as_ref().is_some_and(|e| e.id == id))
                .map(|i| recent.0.iter().skip(i + 1).cloned().collect()),
        };
        (live, replay)
    }
}

/// Who a stream is for, and what it has learnt about threads (a customer's participation).
struct Viewer {
    /// The token's principal.
    who: Principal,
    /// Thread id → whether the customer takes part, and when that was learnt ("no" is
    /// asked again after a moment: the customer may be added).
    threads: HashMap<String, (bool, Instant)>,
    /// Read models, for participation.
    pool: sqlx::PgPool,
}

impl Viewer {
    /// True when one of the event's channels is one the token may join.
    async fn may_see(&mut self, event: &RealtimeEvent) -> bool {
        // An event that also goes to this user's own channel (a thread opened for them, or
        // they were added) says they take part, before the read model may know it.
        let mine = Channel::User(self.who.user_id().to_owned()).name();
        if event.channels.contains(&mine) {
            for name in &event.channels {
                if let Some(Channel::Thread(thread)) = Channel::parse(name) {
                    self.threads.insert(thread, (true, Instant::now()));
                }
            }
            return true;
        }
        for name in &event.channels {
            let visible = match Channel::parse(name) {
                Some(Channel::Tenant(tenant)) => self.who.is_staff_of(&tenant),
                Some(Channel::User(user)) => user == self.who.user_id(),
                // A thread's channel is its customers': staff get every event of their
                // tenant on the tenant's channel, and an event's customer form (without
                // what is the staff's business) goes to the thread alone.
                Some(Channel::Thread(thread)) => match &self.who {
                    Principal::Phone { tenant_id, .. } if tenant_id == &event.tenant_id => {
                        self.takes_part(&thread).await
                    }
                    _ => false,
                },
                Some(Channel::TenantPresence(_)) | None => false,
            };
            if visible {
                return true;
            }
        }
        false
    }

    async fn takes_part(&mut self, thread: &str) -> bool {
        match self.threads.get(thread) {
            Some((true, _)) => return true,
            Some((false, at)) if at.elapsed() < NO_FOR => return false,
            _ => {}
        }
        let Ok(id) = Uuid::parse_str(thread) else {
            return false;
        };
        let found: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM chat_participants WHERE thread_id = $1 AND user_id = $2)",
        )
        .bind(id)
        .bind(self.who.user_id())
        .fetch_one(&self.pool)
        .await;
        match found {
            Ok(known) => {
                self.threads
                    .insert(thread.to_owned(), (known, Instant::now()));
                known
            }
            Err(_) => false,
        }
    }
}

fn sse(event: &RealtimeEvent) -> Event {
    Event::default()
        .event(event.name.as_str())
        .id(event.id.as_str())
        .data(event.data.to_string())
}

fn reset() -> Event {
    Event::default()
        .event("reset")
        .data(r#"{"reason":"events were missed; reload through the query API"}"#)
}

/// What one open stream holds between events.
struct Open {
    viewer: Viewer,
    /// When the token expires: the stream ends then (the client reconnects with a new one).
    expires: tokio::time::Instant,
    /// Becomes true when the server shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The token's claims, checked again whenever revocations change: a stream ends at
    /// once when its session ends, its user is deactivated or demoted, or its tenant is
    /// suspended.
    claims: events::access::Claims,
    /// Revocations, and their changes.
    access: events::http::Access,
    access_changes: tokio::sync::watch::Receiver<u64>,
    live: broadcast::Receiver<Arc<Received>>,
    replay: VecDeque<Arc<Received>>,
    /// Arrival numbers up to this were replayed (or predate the stream).
    replayed_to: Option<u64>,
    /// A `reset` is owed first.
    reset: bool,
    /// Counts this stream against its user's cap while it is open.
    _slot: StreamSlot,
}

impl Open {
    /// The next event to send: the reset owed first, then the replay, then live events
    /// this viewer may see. `None` ends the stream (closing, expiry, revoked access, hub
    /// gone).
    async fn next_event(&mut self) -> Option<Event> {
        if self.reset {
            self.reset = false;
            return Some(reset());
        }
        loop {
            let next = match self.replay.pop_front() {
                Some(r) => r,
                None => {
                    let received = tokio::select! {
                        received = self.live.recv() => received,
                        _ = self.closing.wait_for(|closing| *closing) => return None,
                        () = tokio::time::sleep_until(self.expires) => return None,
                        changed = self.access_changes.changed() => {
                            if changed.is_err() || self.access.check(&self.claims).is_err() {
                                return None;
                            }
                            continue;
                        }
                    };
                    match received {
                        Ok(r) if self.replayed_to.is_some_and(|to| r.seq <= to) => continue,
                        Ok(r) => r,
                        Err(broadcast::error::RecvError::Lagged(_)) => return Some(reset()),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            };
            let Some(event) = &next.event else {
                return Some(reset());
            };
            if self.viewer.may_see(event).await {
                return Some(sse(event));
            }
        }
    }
}

/// One event of the stream as a server-sent-events parser reads it (the schema of each
/// event, not of the stream's bytes).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StreamEvent {
    /// The event's name (`thread.message`, `reset`, …).
    event: Option<String>,
    /// Its fields, as JSON text.
    data: String,
    /// Its id, to send back as `Last-Event-ID`.
    id: Option<String>,
    /// How long to wait before reconnecting, in milliseconds.
    retry: Option<u64>,
}

/// Realtime events (Server-Sent Events).
///
/// The same events as the Pusher channels (docs/realtime.md), those the token may see: staff
/// every event of their tenant, a customer those of the threads they take part in and of their
/// user channel. Each is `event: {name}`, `id: {event_id}`, `data: {JSON}`; a comment every 15
/// s keeps the connection open. With `Last-Event-ID` the stream first replays what followed
/// that id, if it is still in the window (5 minutes, 10,000 events); otherwise, or when the
/// client falls too far behind, it sends `event: reset` (reload through the query API). Send
/// the token in `Authorization` (read the stream with fetch). The stream ends when the token
/// expires (reconnect with a new token and `Last-Event-ID`); it also sends `reset` when
/// query-api's own NATS connection dropped. One user (staff member or customer) holds at most
/// `STREAMS_PER_USER` open streams per query-api process (default 5); another answers 429
/// `too_many_streams` until one closes.
#[utoipa::path(
    get,
    path = "/v1/stream",
    params(("Last-Event-ID" = Option<String>, Header)),
    responses(
        (status = 200, description = "The stream: `event: {name}`, `id: {event_id}`, `data: {JSON}` (docs/realtime.md lists each event's fields; `reset` carries `reason`).", body = StreamEvent, content_type = "text/event-stream"),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn stream(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if matches!(who, Principal::Service { .. }) {
        return Err(Problem::forbidden("Streams are for staff and customers."));
    }
    let user = match &who {
        Principal::Phone { tenant_id, user_id } => format!("phone:{tenant_id}:{user_id}"),
        other => format!("admin:{}", other.user_id()),
    };
    let slot = state.ctx.realtime.hub.claim(user).ok_or_else(|| {
        Problem::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "This user holds as many open streams as allowed; close one first.",
        )
        .with_header(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        )
    })?;
    // The extractor verified the token; its `exp` bounds the stream, and its claims are
    // checked again on every change of revocations.
    let claims = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim()))
        .and_then(|token| state.tokens.claims(token).ok())
        .ok_or_else(|| Problem::internal(&"a verified token no longer verifies"))?;
    let left = (claims.exp - chrono::Utc::now().timestamp()).max(0) as u64;
    let expires = tokio::time::Instant::now() + Duration::from_secs(left);
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let (live, replay) = state.ctx.realtime.hub.subscribe(last_id);
    let owed_reset = replay.is_none();
    let replay: VecDeque<Arc<Received>> = replay.unwrap_or_default().into();
    let replayed_to = replay.back().map(|r| r.seq);
    let open = Open {
        expires,
        closing: state.ctx.realtime.hub.closing.subscribe(),
        claims,
        access_changes: state.access.changes(),
        access: state.access.clone(),
        viewer: Viewer {
            who,
            threads: HashMap::new(),
            pool: state.pool.clone(),
        },
        live,
        replay,
        replayed_to,
        reset: owed_reset,
        _slot: slot,
    };
    let events = futures::stream::unfold(open, |mut open| async move {
        let event = open.next_event().await?;
        Some((Ok::<_, Infallible>(event), open))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> RealtimeEvent {
        RealtimeEvent {
            id: id.to_owned(),
            tenant_id: "t1".to_owned(),
            channels: vec!["private-tenant-t1".to_owned()],
            name: "message.created".to_owned(),
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn resume_replays_what_followed_and_a_gap_forgets_the_window() {
        let hub = Hub::new(5);
        for id in ["a", "b", "c"] {
            hub.receive(event(id));
        }
        let (_, replay) = hub.subscribe(Some("a"));
        let ids: Vec<String> = replay
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(hub.subscribe(Some("unknown")).1.is_none(), "reset");
        let (mut live, _) = hub.subscribe(None);
        hub.gap();
        let marker = live.try_recv().expect("a marker");
        assert!(marker.event.is_none(), "open streams are told to reset");
        assert!(
            hub.subscribe(Some("c")).1.is_none(),
            "after a gap the window no longer vouches for what came before"
        );
    }
}
