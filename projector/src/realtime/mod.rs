//! The realtime worker: turns chat events into Pusher events, delivers them through Soketi's
//! HTTP API (`POST /apps/{app_id}/batch_events`, signed as the Pusher HTTP API defines) to
//! the members who may see them now, and fans them out on core NATS (`{prefix}.{tenant_id}`)
//! for query-api's SSE streams.
//!
//! Delivery is per member, never to a channel clients subscribe to: a Pusher subscription
//! outlives the access that authorised it, so an event goes to the signed-in connections
//! (`#server-to-user-{id}`) of the live, unrevoked sessions of its tenant's staff and of its
//! thread's customers ([`Members`]), read for every batch. A session ended, a user
//! deactivated or a tenant suspended drops out of the next batch, whether or not its
//! connections were closed, and a socket that never signed in receives nothing.
//!
//! It is a side-effect worker ([`Effect`]): its durable consumer's checkpoints move only after
//! Soketi accepted the events, so a Soketi outage delays them and loses none. A crash between
//! Soketi's answer and the checkpoint repeats that batch once; every event carries the stored
//! event's `event_id` and the thread's `version`, so a client drops what it has seen.

/// The context's settings.
pub mod settings;

pub use settings::Settings;

/// Realtime connections of revoked sessions, users and tenants terminated on Soketi.
pub mod eviction;

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use events::chat::{Party, PartyKind, ThreadEvent, THREAD};
use events::realtime::{signed_query, Channel, ConnectionUser, RealtimeEvent};
use events::whatsapp::{ConversationEvent, WHATSAPP_CONVERSATION};
use events::Envelope;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{Effect, Projection, ProjectionError, Target};

/// Most events in one `batch_events` request (the Pusher HTTP API's limit).
const BATCH_LIMIT: usize = 10;

/// Most channels one event names (Soketi's default `maxEventChannelsAtOnce`); an event for
/// more members is sent as several.
const CHANNEL_LIMIT: usize = 100;

/// Where Soketi's HTTP API is and the app it publishes as.
#[derive(Debug, Clone)]
pub struct SoketiApp {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:6001`.
    pub url: String,
    /// App id.
    pub app_id: String,
    /// App key.
    pub key: String,
    /// App secret.
    pub secret: String,
}

/// The realtime side-effect worker.
pub struct Realtime {
    /// Soketi, when configured (without it only the NATS fan-out runs).
    app: Option<SoketiApp>,
    /// Sessions, users, tenants and thread customers: who may see each event now.
    pool: Option<PgPool>,
    /// HTTP client (timeouts set).
    http: reqwest::Client,
    /// Core NATS, for SSE.
    nats: Option<async_nats::Client>,
    /// Subject prefix of the SSE fan-out.
    subject_prefix: String,
    /// The worker's name (its durable consumer).
    name: &'static str,
    /// The aggregate types it turns into realtime events.
    types: &'static [&'static str],
}

impl Realtime {
    /// A worker delivering through `app` when given (to the members `pool` names), and
    /// publishing to `nats` under `subject_prefix` when given.
    pub fn new(
        app: Option<SoketiApp>,
        pool: Option<PgPool>,
        nats: Option<async_nats::Client>,
        subject_prefix: String,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            app: app.filter(|_| pool.is_some()),
            pool,
            http,
            nats,
            subject_prefix,
            name: "realtime",
            types: &[THREAD],
        }
    }

    /// The same worker for WhatsApp deliveries (`message.delivery`), on a consumer of its
    /// own, so the chat worker's consumer keeps its filter.
    pub fn for_whatsapp(mut self) -> Self {
        self.name = "realtime-whatsapp";
        self.types = &[WHATSAPP_CONVERSATION];
        self
    }

    /// Sends one `batch_events` request to `app`.
    async fn send(
        &self,
        app: &SoketiApp,
        batch: &[serde_json::Value],
    ) -> Result<(), ProjectionError> {
        let path = format!("/apps/{}/batch_events", app.app_id);
        app.post(&self.http, &path, &json!({ "batch": batch }))
            .await
    }
}

impl SoketiApp {
    /// A signed `POST` of `body` to the HTTP API's `path`; any answer but a success is an
    /// error (the caller's batch is retried).
    pub async fn post(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), ProjectionError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        let query = signed_query(
            &self.key,
            &self.secret,
            "POST",
            path,
            &body,
            chrono::Utc::now().timestamp(),
        );
        let url = format!("{}{path}?{query}", self.url.trim_end_matches('/'));
        let response = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            // Without its URL: the signed query names the app key and a signature.
            .map_err(|e| ProjectionError::Unavailable(format!("soketi: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(ProjectionError::Unavailable(format!(
                "soketi answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )))
        }
    }
}

#[async_trait]
impl Projection for Realtime {
    fn name(&self) -> &'static str {
        self.name
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        self.types
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn effect(&self) -> Option<&dyn Effect> {
        Some(self)
    }

    /// The effect happened before; besides the checkpoints, only the customers a thread
    /// gained are recorded (`realtime_thread_customers`, the worker's own state).
    async fn apply(
        &self,
        conn: &mut PgConnection,
        _target: &Target,
        event: &Envelope,
    ) -> Result<(), ProjectionError> {
        if let Some(customer) = customer_joined(event)? {
            sqlx::query(
                "INSERT INTO realtime_thread_customers (thread_id, user_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&event.aggregate_id)
            .bind(customer)
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Effect for Realtime {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        let mut outgoing = Vec::with_capacity(events.len());
        for envelope in events {
            outgoing.push(to_realtime(envelope)?);
        }
        // SSE first: a Soketi outage must not stop SSE clients (a retry repeats these, and
        // `event_id` lets a client drop a repeat). Each stream checks its own token against
        // every event's audience.
        if let Some(nats) = &self.nats {
            for event in outgoing.iter().flatten() {
                let subject = format!("{}.{}", self.subject_prefix, event.tenant_id);
                let payload = serde_json::to_vec(event).unwrap_or_default();
                // Ephemeral by design: an SSE client that missed it resumes from the store
                // of recent events or reloads.
                if let Err(e) = nats.publish(subject, payload.into()).await {
                    tracing::warn!(error = %e, "could not fan a realtime event out on NATS");
                }
            }
        }
        let (Some(app), Some(pool)) = (&self.app, &self.pool) else {
            return Ok(());
        };
        if outgoing.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let mut members = Members::load(pool, outgoing.iter().flatten()).await?;
        let mut items = Vec::new();
        for (envelope, realtime) in events.iter().zip(&outgoing) {
            // A customer joining takes part in the very event that says so.
            if let Some(customer) = customer_joined(envelope)? {
                members
                    .customers
                    .entry(envelope.aggregate_id.clone())
                    .or_default()
                    .insert(customer);
            }
            for event in realtime {
                let data = event.data.to_string();
                let channels: Vec<String> = members
                    .of(event)
                    .iter()
                    .map(ConnectionUser::delivery_channel)
                    .collect();
                for chunk in channels.chunks(CHANNEL_LIMIT) {
                    items.push(json!({"channels": chunk, "name": event.name, "data": data}));
                }
            }
        }
        for batch in items.chunks(BATCH_LIMIT) {
            self.send(app, batch).await?;
        }
        Ok(())
    }
}

/// The chatbot user a thread event makes a customer of the thread, if any.
fn customer_joined(envelope: &Envelope) -> Result<Option<String>, ProjectionError> {
    if envelope.aggregate_type != THREAD {
        return Ok(None);
    }
    let event: ThreadEvent = crate::projection::decode(envelope)?;
    let party = match event {
        ThreadEvent::Opened { customer, .. } => customer,
        ThreadEvent::ParticipantAdded { participant } => Some(participant),
        _ => None,
    };
    Ok(party
        .filter(|Party { kind, .. }| *kind == PartyKind::Phone)
        .map(|p| p.id))
}

/// Who may see a batch's events now: read once per batch, so a revocation committed before
/// the batch is delivered is honoured by it.
struct Members {
    /// The tenants' staff sessions that can still hold a working token: created within the
    /// last 25 hours (an access token lives at most a day, and every refresh adds a row),
    /// not revoked, of an active user, of a tenant not suspended.
    staff: HashMap<String, Vec<ConnectionUser>>,
    /// The chatbot users taking part in each thread.
    customers: HashMap<String, BTreeSet<String>>,
    /// Tenants suspended: none of theirs gets anything until reactivated.
    suspended: HashSet<String>,
    /// Tenants whose chatbot is switched off: their chatbot users get nothing meanwhile.
    chatbot_off: HashSet<String>,
}

impl Members {
    async fn load<'a>(
        pool: &PgPool,
        events: impl Iterator<Item = &'a RealtimeEvent>,
    ) -> Result<Self, ProjectionError> {
        let mut tenants = BTreeSet::new();
        let mut threads = BTreeSet::new();
        for event in events {
            tenants.insert(event.tenant_id.clone());
            for channel in event.channels.iter().filter_map(|c| Channel::parse(c)) {
                if let Channel::Thread(thread) = channel {
                    threads.insert(thread);
                }
            }
        }
        let tenants: Vec<String> = tenants.into_iter().collect();
        let threads: Vec<String> = threads.into_iter().collect();
        let (suspended, chatbot_off) = Self::tenant_states(pool, &tenants).await?;
        Ok(Members {
            staff: Self::staff_sessions(pool, &tenants).await?,
            customers: Self::thread_customers(pool, &threads).await?,
            suspended,
            chatbot_off,
        })
    }

    /// Which of `tenants` are suspended, and which have their chatbot switched off.
    async fn tenant_states(
        pool: &PgPool,
        tenants: &[String],
    ) -> Result<(HashSet<String>, HashSet<String>), ProjectionError> {
        let keys: Vec<String> = tenants.iter().map(|t| format!("tenant:{t}")).collect();
        let states: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT substr(key, 8), state @> '{\"suspended\": true}',
                    state @> '{\"chatbot_disabled\": true}'
               FROM access_changes WHERE key = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(pool)
        .await?;
        let suspended: HashSet<String> = states
            .iter()
            .filter(|(_, suspended, _)| *suspended)
            .map(|(t, _, _)| t.clone())
            .collect();
        let chatbot_off: HashSet<String> = states
            .into_iter()
            .filter(|(_, _, off)| *off)
            .map(|(t, _, _)| t)
            .collect();
        Ok((suspended, chatbot_off))
    }

    /// The staff sessions of `tenants` that may still hold a working token. The revocations
    /// recorded with each change (migration 0022) are read too, so a session counts as ended
    /// from the commit that ended it.
    async fn staff_sessions(
        pool: &PgPool,
        tenants: &[String],
    ) -> Result<HashMap<String, Vec<ConnectionUser>>, ProjectionError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT e.tenant_id, s.session_id
               FROM admin_sessions s JOIN admin_emails e USING (user_id)
              WHERE e.tenant_id = ANY($1)
                AND s.created_at > now() - interval '25 hours'
                AND s.status IN ('active', 'spent')
                -- A family ends with any of its tokens revoked (a refresh racing a
                -- revocation can leave its new token active).
                AND NOT EXISTS (SELECT 1 FROM admin_sessions r
                                 WHERE r.session_id = s.session_id AND r.status = 'revoked')
                AND NOT EXISTS (
                    SELECT 1 FROM access_changes c
                     WHERE c.key IN ('session:' || s.session_id, 'user:' || s.user_id)
                       AND (c.state @> '{\"revoked\": true}' OR c.state @> '{\"active\": false}'))
              GROUP BY e.tenant_id, s.session_id",
        )
        .bind(tenants)
        .fetch_all(pool)
        .await?;
        let mut staff: HashMap<String, Vec<ConnectionUser>> = HashMap::new();
        for (tenant, session) in rows {
            staff
                .entry(tenant)
                .or_default()
                .push(ConnectionUser::Session(session));
        }
        Ok(staff)
    }

    /// The chatbot users taking part in each of `threads`.
    async fn thread_customers(
        pool: &PgPool,
        threads: &[String],
    ) -> Result<HashMap<String, BTreeSet<String>>, ProjectionError> {
        let uuids: Vec<Uuid> = threads
            .iter()
            .filter_map(|t| Uuid::parse_str(t).ok())
            .collect();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT thread_id, user_id FROM realtime_thread_customers WHERE thread_id = ANY($1)
             UNION
             SELECT thread_id::text, user_id FROM chat_participants
              WHERE thread_id = ANY($2) AND kind = 'phone'",
        )
        .bind(threads)
        .bind(&uuids)
        .fetch_all(pool)
        .await?;
        let mut customers: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (thread, user) in rows {
            customers.entry(thread).or_default().insert(user);
        }
        Ok(customers)
    }

    /// The connections `event` goes to: the tenant's staff when its audience is the tenant,
    /// the customers of each thread in its audience.
    fn of(&self, event: &RealtimeEvent) -> BTreeSet<ConnectionUser> {
        let mut out = BTreeSet::new();
        if self.suspended.contains(&event.tenant_id) {
            return out;
        }
        for channel in event.channels.iter().filter_map(|c| Channel::parse(c)) {
            match channel {
                Channel::Tenant(tenant) if tenant == event.tenant_id => {
                    out.extend(self.staff.get(&tenant).into_iter().flatten().cloned());
                }
                Channel::Thread(thread) if !self.chatbot_off.contains(&event.tenant_id) => out
                    .extend(
                        self.customers
                            .get(&thread)
                            .into_iter()
                            .flatten()
                            .map(|u| ConnectionUser::Phone(u.clone())),
                    ),
                _ => {}
            }
        }
        out
    }
}

/// The realtime events a stored event becomes (none for events clients need not see).
pub fn to_realtime(envelope: &Envelope) -> Result<Vec<RealtimeEvent>, ProjectionError> {
    if envelope.aggregate_type == WHATSAPP_CONVERSATION {
        return delivery(envelope);
    }
    if envelope.aggregate_type != THREAD {
        return Ok(vec![]);
    }
    let event: ThreadEvent = crate::projection::decode(envelope)?;
    let tenant = envelope.tenant_id();
    let thread = envelope.aggregate_id.as_str();
    let to = Audience {
        dashboard: Channel::Tenant(tenant.to_owned()).name(),
        conversation: Channel::Thread(thread.to_owned()).name(),
    };
    // Every event is named here, so a new one does not compile until it is given a home.
    let mapped = match event {
        own @ (ThreadEvent::Opened { .. }
        | ThreadEvent::ParticipantAdded { .. }
        | ThreadEvent::Assigned { .. }
        | ThreadEvent::BotSwitched { .. }
        | ThreadEvent::Closed { .. }
        | ThreadEvent::Reopened { .. }
        | ThreadEvent::Tagged { .. }
        | ThreadEvent::Read { .. }) => thread_event(own, &to),
        message @ (ThreadEvent::MessageSent { .. }
        | ThreadEvent::MessageEdited { .. }
        | ThreadEvent::MessageDeleted { .. }) => message_event(message, &to),
        scheduled @ (ThreadEvent::MessageScheduled { .. }
        | ThreadEvent::MessageRescheduled { .. }
        | ThreadEvent::ScheduleCancelled { .. }
        | ThreadEvent::ScheduleFailed { .. }) => schedule_event(scheduled, &to),
    };
    let Some(Mapped {
        name,
        mut data,
        channels,
        for_customers,
    }) = mapped
    else {
        return Ok(vec![]);
    };
    let stamp = |data: &mut serde_json::Value| {
        if let Some(object) = data.as_object_mut() {
            object.insert("event_id".into(), json!(envelope.event_id()));
            object.insert("thread_id".into(), json!(thread));
            object.insert("version".into(), json!(envelope.sequence));
        }
    };
    stamp(&mut data);
    let mut out = vec![RealtimeEvent {
        id: envelope.event_id(),
        tenant_id: tenant.to_owned(),
        channels,
        name: name.to_owned(),
        data,
    }];
    if let Some((mut data, channels)) = for_customers {
        stamp(&mut data);
        out.push(RealtimeEvent {
            id: envelope.event_id(),
            tenant_id: tenant.to_owned(),
            channels,
            name: name.to_owned(),
            data,
        });
    }
    Ok(out)
}

/// The channels of one thread: its tenant's staff dashboard and the thread's own (its
/// customers and staff who opened it).
struct Audience {
    dashboard: String,
    conversation: String,
}

impl Audience {
    /// The staff and the thread's customers.
    fn everyone(&self) -> Vec<String> {
        vec![self.dashboard.clone(), self.conversation.clone()]
    }

    /// The tenant's staff only.
    fn staff(&self) -> Vec<String> {
        vec![self.dashboard.clone()]
    }

    /// One user's own channel.
    fn user(id: &str) -> String {
        Channel::User(id.to_owned()).name()
    }
}

/// What a thread event becomes on the realtime channels: the staff's event (its name, data
/// and channels) and, when the thread's customers may see less of it (docs/realtime.md,
/// "What customers see"), what they get instead, with the same id, on their channels only.
struct Mapped {
    name: &'static str,
    data: serde_json::Value,
    channels: Vec<String>,
    for_customers: Option<(serde_json::Value, Vec<String>)>,
}

impl Mapped {
    fn new(name: &'static str, data: serde_json::Value, channels: Vec<String>) -> Self {
        Self {
            name,
            data,
            channels,
            for_customers: None,
        }
    }
}

/// A thread's own life: opened, its people, its bot, closed and reopened, tagged, read.
fn thread_event(event: ThreadEvent, to: &Audience) -> Option<Mapped> {
    let mapped = match event {
        opened @ ThreadEvent::Opened { .. } => return opened_event(opened, to),
        // Which staff take part is the staff's business; a customer added is everyone's.
        ThreadEvent::ParticipantAdded { participant } => {
            let channels = if participant.kind == PartyKind::Phone {
                let mut channels = to.everyone();
                channels.push(Audience::user(&participant.id));
                channels
            } else {
                vec![to.dashboard.clone(), Audience::user(&participant.id)]
            };
            let data = json!({"participant": participant});
            Mapped::new("thread.participant_added", data, channels)
        }
        // Who on the staff side handles a thread is the staff's business (the query API does
        // not show it to customers either).
        ThreadEvent::Assigned {
            agent_id,
            department,
            reason,
        } => {
            let mut channels = to.staff();
            if let Some(agent) = &agent_id {
                channels.push(Audience::user(agent));
            }
            let data = json!({"agent_id": agent_id, "department": department, "reason": reason});
            Mapped::new("thread.assigned", data, channels)
        }
        ThreadEvent::BotSwitched { enabled } => Mapped::new(
            "thread.bot_switched",
            json!({"enabled": enabled}),
            to.everyone(),
        ),
        ThreadEvent::Closed { at } => {
            Mapped::new("thread.closed", json!({"at": at}), to.everyone())
        }
        ThreadEvent::Reopened { at } => {
            Mapped::new("thread.reopened", json!({"at": at}), to.everyone())
        }
        // The staff's own notes.
        ThreadEvent::Tagged { tags } => {
            Mapped::new("thread.tagged", json!({"tags": tags}), to.staff())
        }
        // Whether and when staff read a thread is the staff's business; a customer's read
        // position is everyone's.
        ThreadEvent::Read { reader, number, at } => {
            let channels = if reader.kind == PartyKind::Phone {
                to.everyone()
            } else {
                to.staff()
            };
            let data = json!({"reader_id": reader.id, "reader_kind": reader.kind,
                              "number": number, "at": at});
            Mapped::new("thread.read", data, channels)
        }
        // Another group's: `to_realtime` sends it there.
        _ => return None,
    };
    Some(mapped)
}

/// A thread opened: the staff see its tags, its customers do not (tags are the staff's own
/// notes).
fn opened_event(event: ThreadEvent, to: &Audience) -> Option<Mapped> {
    let ThreadEvent::Opened {
        channel,
        opened_by,
        customer,
        subject,
        bot_enabled,
        tags,
        at,
        ..
    } = event
    else {
        return None;
    };
    let mut theirs = vec![to.conversation.clone()];
    if let Some(c) = &customer {
        theirs.push(Audience::user(&c.id));
    }
    let mut mapped = Mapped::new(
        "thread.created",
        json!({"channel": channel, "opened_by": opened_by, "customer": customer,
               "subject": subject, "bot_enabled": bot_enabled, "tags": tags, "at": at}),
        to.staff(),
    );
    mapped.for_customers = Some((
        json!({"channel": channel, "opened_by": opened_by, "customer": customer,
               "subject": subject, "bot_enabled": bot_enabled, "at": at}),
        theirs,
    ));
    Some(mapped)
}

/// A message sent, edited or deleted: everyone's.
fn message_event(event: ThreadEvent, to: &Audience) -> Option<Mapped> {
    let mapped = match event {
        ThreadEvent::MessageSent {
            message_id,
            number,
            author,
            client_message_id,
            text,
            attachment,
            scheduled_id,
            at,
        } => Mapped::new(
            "message.created",
            json!({"message": {
                "message_id": message_id, "number": number, "author_id": author.id,
                "author_kind": author.kind, "text": text, "attachment": attachment,
                "client_message_id": client_message_id, "scheduled_id": scheduled_id,
                "sent_at": at}}),
            to.everyone(),
        ),
        ThreadEvent::MessageEdited {
            message_id,
            text,
            at,
        } => Mapped::new(
            "message.updated",
            json!({"message_id": message_id, "text": text, "edited_at": at}),
            to.everyone(),
        ),
        ThreadEvent::MessageDeleted { message_id, at, .. } => Mapped::new(
            "message.deleted",
            json!({"message_id": message_id, "deleted_at": at}),
            to.everyone(),
        ),
        // Another group's: `to_realtime` sends it there.
        _ => return None,
    };
    Some(mapped)
}

/// Scheduled messages are the staff's business: the dashboard only.
fn schedule_event(event: ThreadEvent, to: &Audience) -> Option<Mapped> {
    let (name, data) = match event {
        ThreadEvent::MessageScheduled {
            scheduled_id,
            author,
            due_at,
            ..
        } => (
            "message.scheduled",
            json!({"scheduled_id": scheduled_id, "author_id": author.id, "due_at": due_at}),
        ),
        ThreadEvent::MessageRescheduled {
            scheduled_id,
            due_at,
        } => (
            "message.rescheduled",
            json!({"scheduled_id": scheduled_id, "due_at": due_at}),
        ),
        ThreadEvent::ScheduleCancelled { scheduled_id } => (
            "message.schedule_cancelled",
            json!({"scheduled_id": scheduled_id}),
        ),
        ThreadEvent::ScheduleFailed {
            scheduled_id,
            code,
            reason,
            at,
        } => (
            "message.schedule_failed",
            json!({"scheduled_id": scheduled_id, "code": code, "reason": reason, "failed_at": at}),
        ),
        // Another group's: `to_realtime` sends it there.
        _ => return None,
    };
    Some(Mapped::new(name, data, to.staff()))
}

/// A WhatsApp message's delivery as it moves (queued, retrying, sent, delivered, read,
/// failed): `message.delivery` to the dashboard and, when the message is a thread's, to the
/// thread, so the agent sees a reply go out or fail.
fn delivery(envelope: &Envelope) -> Result<Vec<RealtimeEvent>, ProjectionError> {
    let event: ConversationEvent = crate::projection::decode(envelope)?;
    use ConversationEvent as E;
    let (message_id, thread, status, error_code, error) = match event {
        E::MessageQueued {
            message_id,
            thread_id,
            ..
        } => (message_id, thread_id, "queued", None, None),
        E::SendAttemptFailed {
            message_id,
            thread_id,
            code,
            reason,
            ..
        } => (message_id, thread_id, "retrying", code, Some(reason)),
        E::MessageSent {
            message_id,
            thread_id,
            ..
        } => (message_id, thread_id, "sent", None, None),
        E::MessageFailed {
            message_id,
            thread_id,
            code,
            reason,
            ..
        } => (message_id, thread_id, "failed", Some(code), Some(reason)),
        E::StatusUpdated {
            message_id,
            thread_id,
            status,
            error_code,
            error_title,
            ..
        } => (
            message_id,
            thread_id,
            status.as_str(),
            error_code,
            error_title,
        ),
        E::ChangeNotDelivered {
            message_id,
            thread_id,
            change,
            delivery,
            ..
        } => {
            let (code, error) = crate::whatsapp::not_delivered(&change);
            let status = delivery.map_or("sent", |d| d.as_str());
            (message_id, thread_id, status, Some(code), Some(error))
        }
        E::Started { .. }
        | E::MessageRevised { .. }
        | E::MessageReceived { .. }
        | E::SendAttempted { .. }
        | E::MediaStored { .. }
        | E::MediaFailed { .. } => return Ok(vec![]),
    };
    let tenant = envelope.tenant_id().to_owned();
    let mut channels = vec![Channel::Tenant(tenant.clone()).name()];
    if let Some(thread) = &thread {
        channels.push(Channel::Thread(thread.clone()).name());
    }
    Ok(vec![RealtimeEvent {
        id: envelope.event_id(),
        tenant_id: tenant,
        channels,
        name: "message.delivery".to_owned(),
        data: json!({
            "message_id": message_id, "channel": "whatsapp", "status": status,
            "error_code": error_code, "error": error, "thread_id": thread,
            "event_id": envelope.event_id(), "version": envelope.sequence,
        }),
    }])
}

/// The realtime context: events to Soketi and to core NATS (SSE), for chat and WhatsApp, and
/// the eviction of connections whose access ended.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        setup: &crate::context::Setup<'_>,
        settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        let realtime = || {
            Realtime::new(
                settings.soketi_app(),
                setup.pool.clone(),
                setup.nats.clone(),
                settings.realtime_subject_prefix.clone(),
            )
        };
        let mut all: Vec<std::sync::Arc<dyn crate::projection::Projection>> = vec![
            std::sync::Arc::new(realtime()),
            std::sync::Arc::new(realtime().for_whatsapp()),
        ];
        if let (Some(app), Some(pool)) = (settings.soketi_app(), &setup.pool) {
            all.push(std::sync::Arc::new(eviction::Eviction::new(
                app,
                pool.clone(),
            )));
        }
        all
    }

    fn secrets(settings: &Settings) -> Vec<(&'static str, Option<&str>)> {
        vec![("SOKETI_APP_SECRET", settings.soketi_app_secret.as_deref())]
    }
}

#[cfg(test)]
mod tests {
    use events::whatsapp::{ConversationEvent, Delivery};

    use super::*;

    fn envelope(event: &ConversationEvent) -> Envelope {
        Envelope {
            global_position: 7,
            aggregate_type: WHATSAPP_CONVERSATION.into(),
            aggregate_id: "c1".into(),
            sequence: 7,
            event_type: "ChangeNotDelivered".into(),
            event_version: "1.0".into(),
            payload: serde_json::to_value(event).expect("event encodes"),
            metadata: std::collections::BTreeMap::from([(
                events::envelope::keys::TENANT_ID.to_owned(),
                "t1".to_owned(),
            )]),
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"),
        }
    }

    #[test]
    fn a_change_that_did_not_reach_the_contact_keeps_the_replys_delivery_status_live() {
        let told = |delivery: Option<Delivery>| {
            let event = ConversationEvent::ChangeNotDelivered {
                message_id: "m1".into(),
                thread_id: Some("th1".into()),
                change: "edited".into(),
                delivery,
                at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"),
            };
            let out = to_realtime(&envelope(&event)).expect("delivery event");
            (
                out[0].data["status"].as_str().map(str::to_owned),
                out[0].data["error_code"].as_str().map(str::to_owned),
            )
        };
        assert_eq!(
            told(Some(Delivery::Read)),
            (Some("read".into()), Some("edit_not_delivered".into()))
        );
        assert_eq!(
            told(None),
            (Some("sent".into()), Some("edit_not_delivered".into()))
        );
    }
}
