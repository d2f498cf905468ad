//! Telephony's application layer: whose a callback is, and what processing it does (SMS into
//! the contact's SMS thread with its MMS files, calls, delivery statuses).
use axum::http::Uri;
use events::http::Problem;
use events::webhooks::Outcome;
use events::Metadata;
use uuid::Uuid;

use super::aggregate::{CallCommand, SmsCommand, SmsReport};
use super::interpret::{self, Callback};
use crate::chat::aggregate::ThreadError;
use crate::chat::commands::{Action, Actor, ThreadCommand};
use crate::identity::phone::PhoneNumber as E164;
use crate::media::{download, Credential, MediaError};
use crate::store::CommandError;
use crate::webhooks::service::{Attributed, Processing};
use crate::AppState;
use events::chat::{Attachment, Channel, Party, PartyKind};

/// The URL SignalWire called, as it signed it: `BACKEND_URL` (the public base) with the
/// request's path and query. Without `BACKEND_URL` there is none: the URL a request claims
/// (its `Host`) is the caller's to choose, so a signature made for another application's
/// URL would verify against it, and SignalWire callbacks are refused instead.
pub fn public_url(state: &AppState, uri: &Uri) -> Option<String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let base = state.backend_url.as_ref()?;
    Some(format!("{}{path}", base.trim_end_matches('/')))
}

/// The tenant owning the number a callback concerns, if any.
pub(crate) async fn owner(state: &AppState, number: &str) -> Result<Option<String>, Problem> {
    let Some(number) = E164::parse(number) else {
        return Ok(None);
    };
    Ok(state
        .ctx
        .telephony
        .numbers
        .load(number.as_str())
        .await?
        .tenant_id()
        .map(str::to_owned))
}

/// Threads tried for one sender's SMS: the id the platform derives for them, then the next
/// derived ids should one hold another thread (a thread opened under that id before
/// client-chosen ids were kept apart from derived ones).
pub(crate) const SMS_THREAD_CANDIDATES: u32 = 4;

/// The `n`-th id the platform derives for `from`'s SMS thread of `tenant` (name-based, UUID
/// version 5: a client never chooses one, see `chat::http::open`).
pub(crate) fn sms_thread_id(tenant: &str, from: &str, n: u32) -> String {
    let name = match n {
        0 => format!("sms\0{tenant}\0{from}"),
        n => format!("sms\0{tenant}\0{from}\0{n}"),
    };
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// The sender of an SMS as the inbox names them: a number in E.164 (`tel:`, spaces and the
/// usual separators dropped), a short code (3 to 8 digits) or an alphanumeric sender id (1
/// to 11 letters, digits, spaces and `.-&_`, at least one letter), as carriers allow; none
/// for anything else (empty, far too long, other characters).
pub fn sender(raw: &str) -> Option<String> {
    let address = events::telephony::party_address(raw);
    crate::chat::values::contact(&address, Channel::Sms).then_some(address)
}

/// Delivers an inbound SMS into the contact's SMS thread of `tenant` (one per sender, opened
/// on first contact, reopened by a new message): messages authored by the contact — the
/// text with the first file, then one per further file — whose ids derive from the SMS's
/// stream, so a repeat appends nothing. Never into a thread of another channel or customer.
pub(crate) async fn deliver_to_thread(
    state: &AppState,
    tenant: &str,
    from: &str,
    stream: &str,
    body: &str,
    media: &[Attachment],
    metadata: &Metadata,
) -> Result<String, Processing> {
    let attributed = || {
        Some(Attributed {
            payment_id: None,
            tenant_id: tenant.to_owned(),
        })
    };
    let Some(from) = sender(from) else {
        return Err(Processing::Done(
            Outcome::Recorded,
            attributed(),
            "SmsReceived; not delivered into a thread: the sender is not a number, short code or sender id".into(),
        ));
    };
    let from = from.as_str();
    let sms = Sms {
        state,
        tenant,
        stream,
        body,
        media,
        contact: Party {
            id: from.to_owned(),
            kind: PartyKind::Contact,
        },
        actor: Actor::System {
            component: "webhooks".into(),
        },
        at: state.clock.now(),
        metadata,
    };
    for n in 0..SMS_THREAD_CANDIDATES {
        let thread = sms_thread_id(tenant, from, n);
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, thread, "could not deliver an SMS into its thread");
            Processing::Retry("event store unavailable".into())
        };
        match sms.open(&thread).await {
            Ok(_) | Err(CommandError::Rejected(ThreadError::AlreadyExists)) => {}
            Err(CommandError::Rejected(e)) => {
                return Err(Processing::Done(
                    Outcome::Recorded,
                    attributed(),
                    format!("SmsReceived; no thread: {e}"),
                ))
            }
            Err(e) => return Err(failed(&e)),
        }
        match sms.receive(&thread).await {
            Ok(()) => return Ok(thread),
            Err(CommandError::Rejected(ThreadError::NotTheSendersThread)) => {
                tracing::warn!(thread, "an SMS thread id holds another thread: next id");
            }
            // The thread's older messages could not be read: not a verdict, try again.
            Err(CommandError::Rejected(e @ ThreadError::Unavailable(_))) => return Err(failed(&e)),
            Err(CommandError::Rejected(e)) => {
                return Err(Processing::Done(
                    Outcome::Recorded,
                    attributed(),
                    format!("SmsReceived; not delivered into its thread: {e}"),
                ))
            }
            Err(e) => return Err(failed(&e)),
        }
    }
    Err(Processing::Done(
        Outcome::Recorded,
        attributed(),
        "SmsReceived; not delivered: every thread id of the sender holds another thread".into(),
    ))
}

/// An SMS received, on its way into its sender's thread.
struct Sms<'a> {
    state: &'a AppState,
    tenant: &'a str,
    /// The SMS's stream (its message ids derive from it).
    stream: &'a str,
    body: &'a str,
    media: &'a [Attachment],
    contact: Party,
    actor: Actor,
    at: chrono::DateTime<chrono::Utc>,
    metadata: &'a Metadata,
}

impl Sms<'_> {
    /// Opens the sender's thread `thread` (channel `sms`; the bot does not answer on SMS).
    async fn open(
        &self,
        thread: &str,
    ) -> Result<crate::store::Committed, CommandError<ThreadError>> {
        let open = ThreadCommand {
            thread_id: thread.to_owned(),
            actor: self.actor.clone(),
            at: self.at,
            action: Action::Open {
                tenant_id: self.tenant.to_owned(),
                channel: Channel::Sms,
                customer: Some(self.contact.clone()),
                subject: None,
                tags: Vec::new(),
                bot_enabled: Some(false),
            },
        };
        let threads = &self.state.ctx.chat.threads;
        threads.execute(thread, None, open, self.metadata).await
    }

    /// Receives the SMS in `thread`: its text, then one message per further file (each
    /// message's id derived from the thread, the SMS and the part, so a repeat appends
    /// nothing).
    async fn receive(&self, thread: &str) -> Result<(), CommandError<ThreadError>> {
        for n in 0..self.media.len().max(1) {
            let name = match n {
                0 => format!("{thread}\0sms\0{}", self.stream),
                n => format!("{thread}\0sms\0{}\0{n}", self.stream),
            };
            let receive = ThreadCommand {
                thread_id: thread.to_owned(),
                actor: self.actor.clone(),
                at: self.at,
                action: Action::Receive {
                    message_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string(),
                    text: if n == 0 {
                        self.body.to_owned()
                    } else {
                        String::new()
                    },
                    from: self.contact.clone(),
                    channel: Channel::Sms,
                    attachment: self.media.get(n).cloned(),
                },
            };
            let threads = &self.state.ctx.chat.threads;
            threads
                .execute(thread, None, receive, self.metadata)
                .await?;
        }
        Ok(())
    }
}

/// The tenant a kept callback belongs to, fixed when it arrives (the webhook's
/// attribution): the tenant of the SMS or call it reports on, if the platform has recorded
/// it already (a late status of a message a tenant sent stays with that tenant after its
/// number moved on), else the tenant owning the number now.
pub(crate) async fn owner_of_callback(
    state: &AppState,
    payload: &serde_json::Value,
) -> Result<Option<String>, Problem> {
    let (recorded, number) = match interpret::read(payload) {
        Callback::Sms { sid, number, .. } => (sms_stream(state, &sid, &number).await?.1, number),
        Callback::Call { sid, number, .. } => (call_tenant(state, &sid).await?, number),
        Callback::Other => return Ok(None),
    };
    match recorded {
        Some(tenant) => Ok(Some(tenant)),
        None => owner(state, &number).await,
    }
}

/// The tenant of call `sid`'s stream, if the platform has recorded the call.
pub(crate) async fn call_tenant(state: &AppState, sid: &str) -> Result<Option<String>, Problem> {
    sqlx::query_scalar(
        "SELECT metadata->>'tenant_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(events::telephony::CALL)
    .bind(sid)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))
}

/// The `sms` stream of message `sid` on the tenant's `number`, and its tenant if it is
/// recorded: [`events::telephony::sms_id`], or the bare `sid` of a stream recorded before
/// numbers were part of the id, if that message was on this number.
pub(crate) async fn sms_stream(
    state: &AppState,
    sid: &str,
    number: &str,
) -> Result<(String, Option<String>), Problem> {
    let id = events::telephony::sms_id(sid, number);
    let rows: Vec<(String, Option<String>, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_id, metadata->>'tenant_id', payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence = 1",
    )
    .bind(events::telephony::SMS)
    .bind(vec![id.clone(), sid.to_owned()])
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    if let Some((_, tenant, _)) = rows.iter().find(|(stream, _, _)| *stream == id) {
        return Ok((id, tenant.clone()));
    }
    let legacy = rows.into_iter().find(|(_, _, payload)| {
        let event = payload.as_object().and_then(|o| o.values().next());
        let side = |k: &str| event.and_then(|e| e.get(k)).and_then(|v| v.as_str());
        let received = payload.get("SmsReceived").is_some();
        side(if received { "to" } else { "from" }) == Some(number)
    });
    Ok(match legacy {
        Some((stream, tenant, _)) => (stream, tenant),
        None => (id, None),
    })
}

/// The most bytes of one MMS file fetched.
pub(crate) const MAX_MMS_MEDIA_BYTES: u64 = 20 * 1024 * 1024;

/// The longest one MMS file's download may take.
pub(crate) const MMS_FILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest all of one MMS's files may take: well inside the process manager's wait
/// for a webhook's processing (10 minutes), so a slow provider fails the attempt (retried
/// with back-off) instead of holding the webhook queue.
pub(crate) const MMS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

/// Fetches the files an MMS names into the tenant's blob store
/// (`tenants/{tenant}/sms/{stream's UUID}/{n}`): what was stored, in order. A file gone, too
/// large, refused to the credentials or at a URL that may not be fetched is left out
/// (logged; `media_count` still counts it), so the text is never held back by a file; an
/// outage, or the files taking longer than [`MMS_TIMEOUT`], retries the webhook.
pub(crate) async fn fetch_media(
    state: &AppState,
    tenant: &str,
    stream: &str,
    urls: &[(String, Option<String>)],
) -> Result<Vec<Attachment>, Processing> {
    let folder = Uuid::new_v5(&Uuid::NAMESPACE_OID, stream.as_bytes());
    let credential = match &state.ctx.telephony.api_credentials {
        Some((project, token)) => Credential::Basic(project, token),
        None => Credential::None,
    };
    let fetch_all = async {
        let mut stored = Vec::new();
        for (n, (url, declared)) in urls.iter().enumerate() {
            if !reqwest::Url::parse(url).is_ok_and(|u| crate::media::fetchable(&u)) {
                tracing::warn!(sms = %folder, n, "an MMS file's URL is not HTTPS: left out");
                continue;
            }
            let key = format!("tenants/{tenant}/sms/{folder}/{n}");
            let blobs = state.blobs.as_ref();
            let limit = MAX_MMS_MEDIA_BYTES;
            match download(url, credential, limit, MMS_FILE_TIMEOUT, blobs, &key).await {
                Ok((size_bytes, _, served)) if size_bytes > 0 => stored.push(Attachment {
                    object_key: key,
                    content_type: declared
                        .as_deref()
                        .and_then(crate::chat::values::media_type)
                        .or_else(|| served.as_deref().and_then(crate::chat::values::media_type))
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    name: None,
                    size_bytes,
                }),
                Ok(_) => tracing::warn!(sms = %folder, n, "an MMS file is empty: left out"),
                Err(MediaError::Permanent(reason) | MediaError::Unauthorized(reason)) => {
                    tracing::warn!(sms = %folder, n, %reason, "an MMS file could not be had: left out")
                }
                Err(e) => {
                    tracing::warn!(sms = %folder, n, error = %e, "an MMS file could not be fetched");
                    return Err(Processing::Retry(format!("MMS file not fetched: {e}")));
                }
            }
        }
        Ok(stored)
    };
    tokio::time::timeout(MMS_TIMEOUT, fetch_all)
        .await
        .unwrap_or_else(|_| Err(Processing::Retry("MMS files took too long".into())))
}

/// Processes a SignalWire callback: the SMS or call it reports, for the tenant it belonged
/// to when it **arrived** (`received_by`, the webhook's own tenant: [`owner_of_callback`]).
/// Processed later — a retry, a replay, a backlog — it still lands with that tenant, even if
/// the number has moved to another since. A callback that arrived for a number nobody owned
/// is processed for the number's owner now, if any (a replay once it is assigned), else
/// recorded (its webhook), not applied.
pub(crate) async fn process_callback(
    state: &AppState,
    webhook_id: &str,
    payload: &serde_json::Value,
    received_by: Option<&str>,
    metadata: impl Fn(&str) -> Metadata,
) -> Processing {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let callback = interpret::read(payload);
    let number = match &callback {
        Callback::Sms { number, .. } | Callback::Call { number, .. } => number.clone(),
        Callback::Other => return ignored("not an event the platform acts on"),
    };
    let tenant = match (received_by, &callback) {
        (Some(tenant), _) => tenant.to_owned(),
        // A recording callback names no number: it is the call's, once the call's own
        // callbacks are recorded (they may still be on their way).
        (
            None,
            Callback::Call {
                sid, status: None, ..
            },
        ) => match call_tenant(state, sid).await {
            Ok(Some(t)) => t,
            Ok(None) => return Processing::Retry("the call is not recorded yet".into()),
            Err(_) => return Processing::Retry("event store unavailable".into()),
        },
        (None, _) => match owner(state, &number).await {
            Ok(Some(t)) => t,
            Ok(None) => return ignored("no tenant owns the number"),
            Err(_) => return Processing::Retry("event store unavailable".into()),
        },
    };
    // Nothing of a suspended tenant is processed: the delivery waits for its reactivation.
    if state.access.is_suspended(&tenant) {
        return Processing::Held(tenant);
    }
    let at = state.clock.now();
    let metadata = metadata(&tenant);
    let item = Item {
        state,
        tenant: &tenant,
        webhook_id,
        metadata: &metadata,
        at,
    };
    match callback {
        Callback::Sms { sid, report, .. } => item.sms(&sid, &number, report).await,
        call @ Callback::Call { .. } => item.call(call).await,
        Callback::Other => ignored("not an event the platform acts on"),
    }
}

/// The outcome of a callback about someone erased: nothing of it is recorded.
fn erased() -> Processing {
    Processing::Done(
        Outcome::Ignored,
        None,
        "the person it is about was erased".into(),
    )
}

/// One callback of SignalWire, for the tenant that owns what it concerns.
struct Item<'a> {
    state: &'a AppState,
    tenant: &'a str,
    webhook_id: &'a str,
    metadata: &'a Metadata,
    at: chrono::DateTime<chrono::Utc>,
}

impl Item<'_> {
    /// An SMS received or a status of one sent: recorded on its SMS, and a received one
    /// delivered into the contact's thread (its files fetched first, so the event names
    /// them).
    async fn sms(&self, sid: &str, number: &str, report: SmsReport) -> Processing {
        let (state, tenant, webhook_id, metadata, at) = (
            self.state,
            self.tenant,
            self.webhook_id,
            self.metadata,
            self.at,
        );
        let retry = |_| Processing::Retry("event store unavailable".into());
        let stream = match sms_stream(state, sid, number).await {
            Ok((stream, _)) => stream,
            Err(e) => return retry(e),
        };
        let sms = match state.ctx.telephony.sms.load(&stream).await {
            Ok(sms) => sms,
            Err(_) => return Processing::Retry("event store unavailable".into()),
        };
        let inbound = match self.inbound(&sms, &stream, &report).await {
            Ok(inbound) => inbound,
            Err(processing) => return processing,
        };
        let report = match super::personal::sealed_report(&state.keyring, tenant, report).await {
            Ok(report) => report,
            Err(events::keyring::KeyError::Erased) => return erased(),
            Err(_) => return Processing::Retry("data keys unavailable".into()),
        };
        let command = SmsCommand {
            webhook_id: webhook_id.to_owned(),
            report,
            media: inbound
                .as_ref()
                .map(|(_, _, media)| media.clone())
                .unwrap_or_default(),
            at,
        };
        let recorded = state
            .ctx
            .telephony
            .sms
            .execute_with_events(&stream, None, command, metadata)
            .await
            .map(|(_, e)| e.first().map(cqrs_es::DomainEvent::event_type));
        // Delivered into the contact's SMS thread every time (a repeat names the same
        // messages), so an attempt that failed between the two is completed by the next.
        let outcome = match (recorded, inbound) {
            (Ok(event), Some((from, body, media))) => {
                match deliver_to_thread(state, tenant, &from, &stream, &body, &media, metadata)
                    .await
                {
                    Ok(thread) => Ok(Some(format!(
                        "{} in thread {thread}",
                        event.unwrap_or_else(|| "SmsReceived (recorded before)".into())
                    ))),
                    Err(retry) => return retry,
                }
            }
            (recorded, _) => recorded,
        };
        self.verdict(outcome)
    }

    /// What the thread gets of a received SMS: the message as recorded (its text opened:
    /// sealed for the sender, docs/privacy.md), or as it arrives now (its files fetched
    /// first, so the event names them); none for a status.
    async fn inbound(
        &self,
        sms: &super::aggregate::Sms,
        stream: &str,
        report: &SmsReport,
    ) -> Result<Option<(String, String, Vec<Attachment>)>, Processing> {
        let SmsReport::Received {
            from, body, media, ..
        } = report
        else {
            return Ok(None);
        };
        if sms.received() {
            let (recorded, media) = sms.content();
            let body = match self.state.keyring.open(recorded).await {
                Ok(body) if body == events::personal::ERASED => return Err(erased()),
                Ok(body) => body,
                Err(_) => return Err(Processing::Retry("data keys unavailable".into())),
            };
            return Ok(Some((from.clone(), body, media.to_vec())));
        }
        let stored = fetch_media(self.state, self.tenant, stream, media).await?;
        Ok(Some((from.clone(), body.clone(), stored)))
    }

    /// A call's status or recording: recorded on the call.
    async fn call(&self, callback: Callback) -> Processing {
        let Callback::Call {
            sid,
            status,
            recording_sid,
            direction,
            from,
            to,
            duration_secs,
            recording_url,
            ..
        } = callback
        else {
            return Processing::Done(Outcome::Ignored, None, "not a call".into());
        };
        let command = CallCommand {
            webhook_id: self.webhook_id.to_owned(),
            status,
            recording_sid,
            direction,
            from,
            to,
            duration_secs,
            recording_url,
            at: self.at,
        };
        // A recording callback names no one: its link is the call's counterpart's.
        let earlier = match command.status {
            Some(_) => None,
            None => {
                match super::personal::call_counterpart(&self.state.pool, self.tenant, &sid).await {
                    Ok(earlier) => earlier,
                    Err(_) => return Processing::Retry("event store unavailable".into()),
                }
            }
        };
        let keyring = &self.state.keyring;
        let command =
            match super::personal::sealed_call(keyring, self.tenant, command, earlier).await {
                Ok(command) => command,
                Err(events::keyring::KeyError::Erased) => return erased(),
                Err(_) => return Processing::Retry("data keys unavailable".into()),
            };
        let recorded = self
            .state
            .ctx
            .telephony
            .calls
            .execute_with_events(&sid, None, command, self.metadata)
            .await
            .map(|(_, e)| e.first().map(cqrs_es::DomainEvent::event_type));
        self.verdict(recorded)
    }

    /// What processing made of a callback, from what its command recorded.
    fn verdict<E: std::error::Error>(
        &self,
        outcome: Result<Option<String>, CommandError<E>>,
    ) -> Processing {
        let attributed = Some(Attributed {
            payment_id: None,
            tenant_id: self.tenant.to_owned(),
        });
        match outcome {
            Ok(Some(event_type)) => Processing::Done(Outcome::Applied, attributed, event_type),
            Ok(None) => Processing::Done(
                Outcome::Recorded,
                attributed,
                "an earlier or repeated status".into(),
            ),
            Err(CommandError::Rejected(e)) => {
                Processing::Done(Outcome::Ignored, attributed, e.to_string())
            }
            Err(e) => {
                tracing::warn!(error = %e, webhook_id = self.webhook_id, "telephony command failed");
                Processing::Retry("event store unavailable".into())
            }
        }
    }
}
