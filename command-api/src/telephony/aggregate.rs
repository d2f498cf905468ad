//! The aggregates of telephony.
//!
//! - [`PhoneNumber`] (id = the number in E.164): which tenant owns it. Keyed by the number,
//!   so two tenants cannot both assign it.
//! - [`Sms`] (id = the provider's `MessageSid`) and [`Call`] (id = its `CallSid`): what the
//!   provider reported. A message is received once; statuses only move forward, so a late
//!   or repeated callback changes nothing.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::telephony::{
    call_status_rank, sms_status_rank, CallEvent, Direction, PhoneNumberEvent, SmsEvent, CALL,
    PHONE_NUMBER, SMS,
};
use serde::{Deserialize, Serialize};

/// A command on a phone number.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneNumberCommand {
    /// Give it to `tenant_id`.
    Assign {
        /// The tenant.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// `tenant_id` gives it up.
    Release {
        /// The tenant asking.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a phone-number command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    /// 409 `number_taken`.
    #[error("the number belongs to another tenant")]
    Taken,
    /// 404.
    #[error("the tenant owns no such number")]
    NotFound,
}

/// A phone number (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhoneNumber {
    /// Its owner, while assigned.
    tenant_id: Option<String>,
}

impl PhoneNumber {
    /// Its owner, while assigned.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }
}

impl Aggregate for PhoneNumber {
    const TYPE: &'static str = PHONE_NUMBER;
    type Command = PhoneNumberCommand;
    type Event = PhoneNumberEvent;
    type Error = PhoneNumberError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PhoneNumberCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PhoneNumberError> {
        let event = match command {
            PhoneNumberCommand::Assign { tenant_id, at } => match &self.tenant_id {
                Some(owner) if *owner == tenant_id => None,
                Some(_) => return Err(PhoneNumberError::Taken),
                None => Some(PhoneNumberEvent::Assigned { tenant_id, at }),
            },
            PhoneNumberCommand::Release { tenant_id, at } => match &self.tenant_id {
                Some(owner) if *owner == tenant_id => Some(PhoneNumberEvent::Released { at }),
                _ => return Err(PhoneNumberError::NotFound),
            },
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PhoneNumberEvent) {
        match event {
            PhoneNumberEvent::Assigned { tenant_id, .. } => self.tenant_id = Some(tenant_id),
            PhoneNumberEvent::Released { .. } => self.tenant_id = None,
        }
    }
}

/// What a callback reported about an SMS.
#[derive(Debug, Clone, PartialEq)]
pub enum SmsReport {
    /// It arrived at the tenant's number.
    Received {
        /// Sender.
        from: String,
        /// The tenant's number.
        to: String,
        /// Text.
        body: String,
        /// Media attached.
        media_count: u32,
        /// The media's URLs at the provider and their types, as the callback named them
        /// (fetched by the route; the command carries what was stored).
        media: Vec<(String, Option<String>)>,
    },
    /// The delivery status of one the tenant sent.
    Status {
        /// The provider's status.
        status: String,
        /// Its error code, if any.
        error_code: Option<String>,
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
    },
}

impl SmsReport {
    /// Whether a status is of a message the tenant's number is receiving (`receiving`):
    /// its sender is the other party, not its recipient.
    pub fn inbound_status(status: &str) -> bool {
        status == "receiving"
    }

    /// The other party: the sender of a message the tenant's number receives, the
    /// recipient of one it sent.
    pub fn other_party(&self) -> &str {
        match self {
            SmsReport::Received { from, .. } => from,
            SmsReport::Status { status, from, .. } if Self::inbound_status(status) => from,
            SmsReport::Status { to, .. } => to,
        }
    }
}

/// A callback about an SMS, from webhook `webhook_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsCommand {
    /// The webhook.
    pub webhook_id: String,
    /// What it said.
    pub report: SmsReport,
    /// The media of a received MMS, fetched into the blob store.
    pub media: Vec<events::chat::Attachment>,
    /// When.
    pub at: DateTime<Utc>,
}

/// An SMS (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sms {
    /// Whether it was received (inbound).
    received: bool,
    /// Its last status's rank.
    rank: Option<u8>,
    /// A received message's text and media, as recorded: what its thread is given when the
    /// delivery is completed by a later attempt.
    body: String,
    /// The media stored.
    media: Vec<events::chat::Attachment>,
}

impl Sms {
    /// Whether it was received.
    pub fn received(&self) -> bool {
        self.received
    }

    /// A received message's text and stored media.
    pub fn content(&self) -> (&str, &[events::chat::Attachment]) {
        (&self.body, &self.media)
    }
}

/// Why an SMS or call callback was not applied (never an HTTP error: it is the webhook's
/// recorded outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// A status the platform does not know.
    #[error("unknown status")]
    UnknownStatus,
}

impl Aggregate for Sms {
    const TYPE: &'static str = SMS;
    type Command = SmsCommand;
    type Event = SmsEvent;
    type Error = ReportError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SmsCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ReportError> {
        let SmsCommand {
            webhook_id,
            report,
            media,
            at,
        } = command;
        let event = match report {
            SmsReport::Received {
                from,
                to,
                body,
                media_count,
                ..
            } => (!self.received).then_some(SmsEvent::SmsReceived {
                from,
                to,
                body,
                media_count,
                media,
                webhook_id,
                at,
            }),
            SmsReport::Status {
                status,
                error_code,
                from,
                to,
            } => {
                let rank = sms_status_rank(&status).ok_or(ReportError::UnknownStatus)?;
                (self.rank.is_none_or(|r| rank > r)).then_some(SmsEvent::DeliveryStatusChanged {
                    status,
                    error_code,
                    from,
                    to,
                    webhook_id,
                    at,
                })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: SmsEvent) {
        match event {
            SmsEvent::SmsReceived { body, media, .. } => {
                self.received = true;
                self.rank = sms_status_rank("received");
                self.body = body;
                self.media = media;
            }
            SmsEvent::DeliveryStatusChanged { status, .. } => self.rank = sms_status_rank(&status),
        }
    }
}

/// A callback about a call, from webhook `webhook_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallCommand {
    /// The webhook.
    pub webhook_id: String,
    /// The provider's status; none on a recording callback.
    pub status: Option<String>,
    /// The recording's id, on a recording callback.
    pub recording_sid: Option<String>,
    /// Which way.
    pub direction: Direction,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Seconds, once ended.
    pub duration_secs: Option<u32>,
    /// The recording, if any.
    pub recording_url: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A call (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Call {
    /// Its last status's rank.
    rank: Option<u8>,
    /// Whether its recording is known.
    recorded: bool,
    /// The recordings reported by recording callbacks (a call may have several).
    recordings: Vec<String>,
}

impl Aggregate for Call {
    const TYPE: &'static str = CALL;
    type Command = CallCommand;
    type Event = CallEvent;
    type Error = ReportError;
    type Services = ();

    async fn handle(
        &mut self,
        c: CallCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ReportError> {
        let Some(status) = c.status else {
            // A recording callback: each recording, once.
            let (Some(recording_sid), Some(recording_url)) = (c.recording_sid, c.recording_url)
            else {
                return Err(ReportError::UnknownStatus);
            };
            if !self.recordings.contains(&recording_sid) {
                let event = CallEvent::CallRecorded {
                    recording_sid,
                    recording_url,
                    duration_secs: c.duration_secs,
                    webhook_id: c.webhook_id,
                    at: c.at,
                };
                sink.write(event, self).await;
            }
            return Ok(());
        };
        let rank = call_status_rank(&status).ok_or(ReportError::UnknownStatus)?;
        // Forward only; at the final rank, a callback that brings the recording still counts.
        let newer = self.rank.is_none_or(|r| rank > r);
        let recording = !self.recorded && c.recording_url.is_some() && self.rank == Some(rank);
        if newer || recording {
            let event = CallEvent::CallStatusChanged {
                status,
                direction: c.direction,
                from: c.from,
                to: c.to,
                duration_secs: c.duration_secs,
                recording_url: c.recording_url,
                webhook_id: c.webhook_id,
                at: c.at,
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CallEvent) {
        match event {
            CallEvent::CallStatusChanged {
                status,
                recording_url,
                ..
            } => {
                self.rank = call_status_rank(&status).max(self.rank);
                self.recorded |= recording_url.is_some();
            }
            CallEvent::CallRecorded { recording_sid, .. } => {
                self.recorded = true;
                self.recordings.push(recording_sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn assigned(tenant: &str) -> PhoneNumberEvent {
        PhoneNumberEvent::Assigned {
            tenant_id: tenant.into(),
            at: t0(),
        }
    }

    #[test]
    fn assign_a_free_number_gives_it_to_the_tenant() {
        TestFramework::<PhoneNumber>::with(())
            .given_no_previous_events()
            .when(PhoneNumberCommand::Assign {
                tenant_id: "t1".into(),
                at: t0(),
            })
            .then_expect_events(vec![assigned("t1")]);
    }

    #[test]
    fn assign_again_to_the_owner_appends_nothing_and_to_another_is_refused() {
        TestFramework::<PhoneNumber>::with(())
            .given(vec![assigned("t1")])
            .when(PhoneNumberCommand::Assign {
                tenant_id: "t1".into(),
                at: t0(),
            })
            .then_expect_events(vec![]);
        TestFramework::<PhoneNumber>::with(())
            .given(vec![assigned("t1")])
            .when(PhoneNumberCommand::Assign {
                tenant_id: "t2".into(),
                at: t0(),
            })
            .then_expect_error(PhoneNumberError::Taken);
    }

    #[test]
    fn release_by_the_owner_frees_it_and_by_another_is_not_found() {
        TestFramework::<PhoneNumber>::with(())
            .given(vec![assigned("t1")])
            .when(PhoneNumberCommand::Release {
                tenant_id: "t1".into(),
                at: t0(),
            })
            .then_expect_events(vec![PhoneNumberEvent::Released { at: t0() }]);
        TestFramework::<PhoneNumber>::with(())
            .given(vec![assigned("t1")])
            .when(PhoneNumberCommand::Release {
                tenant_id: "t2".into(),
                at: t0(),
            })
            .then_expect_error(PhoneNumberError::NotFound);
    }

    fn status(webhook: &str, status: &str) -> SmsCommand {
        SmsCommand {
            webhook_id: webhook.into(),
            report: SmsReport::Status {
                status: status.into(),
                error_code: None,
                from: "+15550001".into(),
                to: "+15550002".into(),
            },
            media: Vec::new(),
            at: t0(),
        }
    }

    fn status_changed(webhook: &str, status: &str) -> SmsEvent {
        SmsEvent::DeliveryStatusChanged {
            status: status.into(),
            error_code: None,
            from: "+15550001".into(),
            to: "+15550002".into(),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    #[test]
    fn sms_statuses_only_move_forward() {
        TestFramework::<Sms>::with(())
            .given(vec![status_changed("w1", "sent")])
            .when(status("w2", "delivered"))
            .then_expect_events(vec![status_changed("w2", "delivered")]);
        TestFramework::<Sms>::with(())
            .given(vec![status_changed("w1", "delivered")])
            .when(status("w2", "sent"))
            .then_expect_events(vec![]);
        TestFramework::<Sms>::with(())
            .given(vec![status_changed("w1", "delivered")])
            .when(status("w2", "delivered"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn every_status_the_provider_reports_is_known_and_read_comes_after_delivery() {
        for known in ["scheduled", "canceled", "partially_delivered", "read"] {
            TestFramework::<Sms>::with(())
                .given_no_previous_events()
                .when(status("w1", known))
                .then_expect_events(vec![status_changed("w1", known)]);
        }
        TestFramework::<Sms>::with(())
            .given(vec![status_changed("w1", "delivered")])
            .when(status("w2", "read"))
            .then_expect_events(vec![status_changed("w2", "read")]);
    }

    #[test]
    fn an_unknown_sms_status_is_refused() {
        TestFramework::<Sms>::with(())
            .given_no_previous_events()
            .when(status("w1", "teleported"))
            .then_expect_error(ReportError::UnknownStatus);
    }

    #[test]
    fn an_sms_is_received_once() {
        let received = SmsEvent::SmsReceived {
            from: "+15550001".into(),
            to: "+15550002".into(),
            body: "Hello".into(),
            media_count: 0,
            media: Vec::new(),
            webhook_id: "w1".into(),
            at: t0(),
        };
        let command = SmsCommand {
            webhook_id: "w2".into(),
            report: SmsReport::Received {
                from: "+15550001".into(),
                to: "+15550002".into(),
                body: "Hello".into(),
                media_count: 0,
                media: Vec::new(),
            },
            media: Vec::new(),
            at: t0(),
        };
        TestFramework::<Sms>::with(())
            .given(vec![received])
            .when(command)
            .then_expect_events(vec![]);
    }

    fn call(webhook: &str, status: &str, recording: Option<&str>) -> CallCommand {
        CallCommand {
            webhook_id: webhook.into(),
            status: Some(status.into()),
            recording_sid: None,
            direction: Direction::Inbound,
            from: "+15550001".into(),
            to: "+15550002".into(),
            duration_secs: (status == "completed").then_some(42),
            recording_url: recording.map(str::to_owned),
            at: t0(),
        }
    }

    fn call_changed(webhook: &str, status: &str, recording: Option<&str>) -> CallEvent {
        CallEvent::CallStatusChanged {
            status: status.into(),
            direction: Direction::Inbound,
            from: "+15550001".into(),
            to: "+15550002".into(),
            duration_secs: (status == "completed").then_some(42),
            recording_url: recording.map(str::to_owned),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    #[test]
    fn call_statuses_only_move_forward_and_a_late_recording_still_counts() {
        TestFramework::<Call>::with(())
            .given(vec![call_changed("w1", "completed", None)])
            .when(call("w2", "ringing", None))
            .then_expect_events(vec![]);
        TestFramework::<Call>::with(())
            .given(vec![call_changed("w1", "completed", None)])
            .when(call("w2", "completed", Some("https://rec/1")))
            .then_expect_events(vec![call_changed("w2", "completed", Some("https://rec/1"))]);
        TestFramework::<Call>::with(())
            .given(vec![call_changed("w1", "completed", Some("https://rec/1"))])
            .when(call("w2", "completed", Some("https://rec/1")))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_recording_callback_records_the_recording_once() {
        let recording = |webhook: &str| CallCommand {
            webhook_id: webhook.into(),
            status: None,
            recording_sid: Some("RE1".into()),
            direction: Direction::Inbound,
            from: String::new(),
            to: String::new(),
            duration_secs: Some(40),
            recording_url: Some("https://rec/RE1".into()),
            at: t0(),
        };
        let recorded = CallEvent::CallRecorded {
            recording_sid: "RE1".into(),
            recording_url: "https://rec/RE1".into(),
            duration_secs: Some(40),
            webhook_id: "w2".into(),
            at: t0(),
        };
        TestFramework::<Call>::with(())
            .given(vec![call_changed("w1", "completed", None)])
            .when(recording("w2"))
            .then_expect_events(vec![recorded.clone()]);
        TestFramework::<Call>::with(())
            .given(vec![
                call_changed("w1", "completed", None),
                recorded.clone(),
            ])
            .when(recording("w3"))
            .then_expect_events(vec![]);
        // A second recording of the call is another.
        let mut second = recording("w4");
        second.recording_sid = Some("RE2".into());
        second.recording_url = Some("https://rec/RE2".into());
        TestFramework::<Call>::with(())
            .given(vec![call_changed("w1", "completed", None), recorded])
            .when(second)
            .then_expect_events(vec![CallEvent::CallRecorded {
                recording_sid: "RE2".into(),
                recording_url: "https://rec/RE2".into(),
                duration_secs: Some(40),
                webhook_id: "w4".into(),
                at: t0(),
            }]);
        // A status callback after it does not record it again.
        TestFramework::<Call>::with(())
            .given(vec![
                call_changed("w1", "in-progress", None),
                CallEvent::CallRecorded {
                    recording_sid: "RE1".into(),
                    recording_url: "https://rec/RE1".into(),
                    duration_secs: None,
                    webhook_id: "w2".into(),
                    at: t0(),
                },
            ])
            .when(call("w3", "completed", None))
            .then_expect_events(vec![call_changed("w3", "completed", None)]);
    }
}
