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

/// A callback about an SMS, from webhook `webhook_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmsCommand {
    /// The webhook.
    pub webhook_id: String,
    /// What it said.
    pub report: SmsReport,
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
            at,
        } = command;
        let event = match report {
            SmsReport::Received {
                from,
                to,
                body,
                media_count,
            } => (!self.received).then_some(SmsEvent::SmsReceived {
                from,
                to,
                body,
                media_count,
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
            SmsEvent::SmsReceived { .. } => {
                self.received = true;
                self.rank = sms_status_rank("received");
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
    /// The provider's status.
    pub status: String,
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
        let rank = call_status_rank(&c.status).ok_or(ReportError::UnknownStatus)?;
        // Forward only; at the final rank, a callback that brings the recording still counts.
        let newer = self.rank.is_none_or(|r| rank > r);
        let recording = !self.recorded && c.recording_url.is_some() && self.rank == Some(rank);
        if newer || recording {
            let event = CallEvent::CallStatusChanged {
                status: c.status,
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
        let CallEvent::CallStatusChanged {
            status,
            recording_url,
            ..
        } = event;
        self.rank = call_status_rank(&status).max(self.rank);
        self.recorded |= recording_url.is_some();
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
            },
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
            status: status.into(),
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
}
