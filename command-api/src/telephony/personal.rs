//! What an SMS's or a call's events hold of the other party, sealed for them
//! (docs/privacy.md): their number, an SMS's text, a call's recording link. The person is
//! a contact of the tenant, named by their number as a thread names them
//! (`events::personal::subject_id("contact", tenant, number)`), so one erasure covers their
//! SMS thread, their SMS and their calls. The aggregates decide on what they compare (ranks,
//! recording ids), never on these values, so the commands carry them sealed.

use events::keyring::{KeyError, Keyring, Subject, SubjectKind};
use events::personal::SealedField;
use events::telephony::Direction;
use uuid::Uuid;

use super::aggregate::{CallCommand, SmsReport};

/// The contact of `tenant` with number `number`, however it is spelled
/// ([`events::telephony::party_address`]: the inbox's sender, their thread's customer);
/// none for an empty number.
pub fn contact(tenant: &str, number: &str) -> Option<Uuid> {
    let address = events::telephony::party_address(number);
    (!address.is_empty()).then(|| events::personal::subject_id("contact", tenant, &address))
}

/// Whom a callback about call `sid` of `tenant` is sealed for while the call's other party
/// is not known yet (a recording callback that arrives before any status of its call): a
/// subject of the call itself, erased with the party once they are known and erased
/// ([`calls_of`]).
pub fn pending_call(tenant: &str, sid: &str) -> Uuid {
    events::personal::subject_id("call", tenant, sid)
}

/// The calls of `tenant` whose other party is data subject `subject`, as their first
/// recorded status names them (sealed for them, or in clear before sealing).
pub async fn calls_of(
    pool: &sqlx::PgPool,
    tenant: &str,
    subject: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    let firsts: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, payload->'CallStatusChanged'
           FROM events
          WHERE aggregate_type = 'call' AND event_type = 'CallStatusChanged'
            AND metadata->>'tenant_id' = $1
          ORDER BY aggregate_id, sequence",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(firsts
        .into_iter()
        .filter(|(_, first)| party_of(tenant, first) == Some(subject))
        .map(|(sid, _)| sid)
        .collect())
}

/// The other party a `CallStatusChanged` body names: the subject its sealed number names,
/// or the contact of its number in clear.
fn party_of(tenant: &str, first: &serde_json::Value) -> Option<Uuid> {
    let field = match first["direction"].as_str() {
        Some("outbound") => "to",
        _ => "from",
    };
    let party = first[field].as_str().unwrap_or_default();
    match SealedField::parse(party) {
        Some(sealed) => Some(sealed.subject),
        None => contact(tenant, party).filter(|_| party != events::personal::ERASED),
    }
}

/// Seals texts for one contact.
pub struct Sealer<'a> {
    /// The keys.
    pub keyring: &'a Keyring,
    /// The tenant.
    pub tenant: &'a str,
    /// The contact.
    pub subject: Uuid,
}

impl Sealer<'_> {
    /// `text` sealed (an empty text stays empty: it says nothing).
    pub async fn seal(&self, text: String) -> Result<String, KeyError> {
        if text.is_empty() {
            return Ok(text);
        }
        let subject = Subject {
            id: self.subject,
            kind: SubjectKind::Contact,
            tenant_id: self.tenant,
        };
        self.keyring.seal(subject, &text).await
    }
}

/// `report` with the other party's number and a received text sealed for them.
pub async fn sealed_report(
    keyring: &Keyring,
    tenant: &str,
    mut report: SmsReport,
) -> Result<SmsReport, KeyError> {
    let Some(subject) = contact(tenant, report.other_party()) else {
        return Ok(report);
    };
    let sealer = Sealer {
        keyring,
        tenant,
        subject,
    };
    match &mut report {
        SmsReport::Received { from, body, .. } => {
            *from = sealer.seal(std::mem::take(from)).await?;
            *body = sealer.seal(std::mem::take(body)).await?;
        }
        SmsReport::Status {
            status, from, to, ..
        } => {
            let party = match SmsReport::inbound_status(status) {
                true => from,
                false => to,
            };
            *party = sealer.seal(std::mem::take(party)).await?;
        }
    }
    Ok(report)
}

/// `command` with the other party's number and the recording link sealed for them: the
/// caller of an inbound call, the callee of an outbound one; for a recording callback, which
/// names no one, the party `earlier` (the call's recorded counterpart, if any) names.
pub async fn sealed_call(
    keyring: &Keyring,
    tenant: &str,
    mut command: CallCommand,
    earlier: Option<Uuid>,
) -> Result<CallCommand, KeyError> {
    let party = match command.direction {
        Direction::Inbound => &command.from,
        Direction::Outbound => &command.to,
    };
    let Some(subject) = contact(tenant, party).or(earlier) else {
        return Ok(command);
    };
    let sealer = Sealer {
        keyring,
        tenant,
        subject,
    };
    match command.direction {
        Direction::Inbound => command.from = sealer.seal(std::mem::take(&mut command.from)).await?,
        Direction::Outbound => command.to = sealer.seal(std::mem::take(&mut command.to)).await?,
    }
    if let Some(url) = command.recording_url.take() {
        command.recording_url = Some(sealer.seal(url).await?);
    }
    Ok(command)
}

/// The contact of call `sid` as its first recorded status names them (sealed for them, or
/// in clear if recorded before sealing), if the call has one.
pub async fn call_counterpart(
    pool: &sqlx::PgPool,
    tenant: &str,
    sid: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let first: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload->'CallStatusChanged' FROM events
          WHERE aggregate_type = 'call' AND aggregate_id = $1
            AND event_type = 'CallStatusChanged'
          ORDER BY sequence LIMIT 1",
    )
    .bind(sid)
    .fetch_optional(pool)
    .await?;
    Ok(first.and_then(|first| party_of(tenant, &first)))
}
