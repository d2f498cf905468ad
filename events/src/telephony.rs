//! Events of telephony: the phone numbers tenants own (aggregate type `phone_number`, id = the
//! number in E.164), and the SMS and calls SignalWire reports (aggregate types `sms`, id =
//! [`sms_id`] of the provider's `MessageSid` and the tenant's number, and `call`, id = its
//! `CallSid`).
//!
//! A number belongs to one tenant at a time: its aggregate is keyed by the number, so two
//! tenants cannot both assign it. SMS and call statuses only move forward (a late "sent"
//! after "delivered" is recorded by the webhook, not applied).

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type of phone numbers.
pub const PHONE_NUMBER: &str = "phone_number";
/// The aggregate type of SMS messages.
pub const SMS: &str = "sms";
/// The aggregate type of calls.
pub const CALL: &str = "call";

/// The id of the `sms` stream of message `sid` on the tenant's `number`: a message id is
/// the provider's, and one reused for another number is another message. (Streams recorded
/// before numbers were part of the id are named by the bare `MessageSid`, and stay so.)
pub fn sms_id(sid: &str, number: &str) -> String {
    format!("{sid}@{number}")
}

/// The other party of an SMS or a call as the platform names them — the SMS inbox's sender,
/// a thread's contact, the data subject their personal data is sealed for: a number with
/// `tel:` (or a `sip:` address's user part), spaces and the usual separators (`-`, `.`,
/// `(`, `)`) dropped, and the international prefix `00` written `+`, so every spelling of
/// one number is one person; anything else (an alphanumeric sender id) trimmed. A number
/// without a country code stays as it is: which country it is in is not known.
pub fn party_address(raw: &str) -> String {
    let trimmed = raw.trim();
    let lower = trimmed.to_ascii_lowercase();
    let number = if lower.starts_with("sip:") || lower.starts_with("sips:") {
        let user = &trimmed[trimmed.find(':').map_or(0, |i| i + 1)..];
        user.split(['@', ';']).next().unwrap_or_default()
    } else if lower.starts_with("tel:") {
        &trimmed[4..]
    } else {
        trimmed
    };
    let compact: String = number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match compact.strip_prefix('+') {
        Some(rest) if digits(rest) => compact,
        None if digits(&compact) => match compact.strip_prefix("00") {
            Some(rest) if rest.len() >= 7 && !rest.starts_with('0') => format!("+{rest}"),
            _ => compact,
        },
        _ => trimmed.to_owned(),
    }
}

/// Something that happened to a phone number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PhoneNumberEvent {
    /// The number was given to a tenant: its SMS and calls are the tenant's.
    Assigned {
        /// The tenant.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The tenant gave the number up; webhooks for it are recorded as the platform's.
    Released {
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PhoneNumberEvent {
    fn event_type(&self) -> String {
        match self {
            PhoneNumberEvent::Assigned { .. } => "Assigned",
            PhoneNumberEvent::Released { .. } => "Released",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Which way a message or call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// To one of the tenant's numbers.
    Inbound,
    /// From one of the tenant's numbers.
    Outbound,
}

/// Something that happened to an SMS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SmsEvent {
    /// An SMS reached one of the tenant's numbers.
    SmsReceived {
        /// Sender: a number (E.164), a short code (digits) or an alphanumeric sender id.
        from: String,
        /// The tenant's number (E.164).
        to: String,
        /// The text as sent (it may be blank: a message of media only, or of spaces).
        body: String,
        /// Media attached (MMS), by count.
        media_count: u32,
        /// The media fetched into the blob store
        /// (`tenants/{tenant}/sms/{stream}/{n}`), in the order sent; a file that could not
        /// be had (gone, over 20 MiB) is missing here and counted in `media_count`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        media: Vec<crate::chat::Attachment>,
        /// The webhook that reported it.
        webhook_id: String,
        /// When it arrived.
        at: DateTime<Utc>,
    },
    /// The provider reported the delivery status of an SMS sent from a tenant's number.
    DeliveryStatusChanged {
        /// `scheduled`, `accepted`, `queued`, `sending`, `sent`, `delivered`, `undelivered`,
        /// `failed`, `partially_delivered`, `canceled`, `read`.
        status: String,
        /// The provider's error code, on failure.
        #[serde(default)]
        error_code: Option<String>,
        /// Sender (the tenant's number).
        from: String,
        /// Recipient.
        to: String,
        /// The webhook that reported it.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SmsEvent {
    fn event_type(&self) -> String {
        match self {
            SmsEvent::SmsReceived { .. } => "SmsReceived",
            SmsEvent::DeliveryStatusChanged { .. } => "DeliveryStatusChanged",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Something that happened to a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CallEvent {
    /// The provider reported a call's status.
    CallStatusChanged {
        /// `queued`, `ringing`, `in-progress`, `completed`, `busy`, `failed`, `no-answer`,
        /// `canceled`.
        status: String,
        /// Which way.
        direction: Direction,
        /// Caller (E.164).
        from: String,
        /// Callee (E.164).
        to: String,
        /// Seconds, once it ended.
        #[serde(default)]
        duration_secs: Option<u32>,
        /// The recording, when one was made.
        #[serde(default)]
        recording_url: Option<String>,
        /// The webhook that reported it.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported a recording of the call (a recording callback: no call
    /// status); once per recording.
    CallRecorded {
        /// The provider's `RecordingSid`.
        recording_sid: String,
        /// Where the provider serves it.
        recording_url: String,
        /// Its length in seconds, if said.
        #[serde(default)]
        duration_secs: Option<u32>,
        /// The webhook that reported it.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CallEvent {
    fn event_type(&self) -> String {
        match self {
            CallEvent::CallStatusChanged { .. } => "CallStatusChanged",
            CallEvent::CallRecorded { .. } => "CallRecorded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// The order of delivery statuses: a status only replaces an earlier one.
pub fn sms_status_rank(status: &str) -> Option<u8> {
    Some(match status {
        "scheduled" | "accepted" | "queued" => 0,
        "sending" => 1,
        "sent" => 2,
        "delivered" | "undelivered" | "failed" | "partially_delivered" | "canceled" => 3,
        // Read receipts (channels that report them) come after delivery.
        "read" => 4,
        // Inbound statuses: a received message is final.
        "receiving" => 0,
        "received" => 3,
        _ => return None,
    })
}

/// The order of call statuses: a status only replaces an earlier one.
pub fn call_status_rank(status: &str) -> Option<u8> {
    Some(match status {
        "queued" | "initiated" => 0,
        "ringing" => 1,
        "in-progress" | "answered" => 2,
        "completed" | "busy" | "failed" | "no-answer" | "canceled" => 3,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_number_is_one_party() {
        for raw in [
            "+33622222222",
            "tel:+33622222222",
            " +33 6 22 22 22 22 ",
            "+33-622-222-222",
            "+33 (6) 22.22.22.22",
            "0033622222222",
            "TEL:+33622222222",
            "sip:+33622222222@sip.example.com",
            "sip:0033622222222@sip.example.com;transport=udp",
        ] {
            assert_eq!(party_address(raw), "+33622222222", "{raw}");
        }
        assert_eq!(party_address(" ACME Bank "), "ACME Bank");
        assert_eq!(party_address("72345"), "72345");
        // A national number's country is not known; `00` alone is no number.
        assert_eq!(party_address("0622222222"), "0622222222");
        assert_eq!(party_address("00"), "00");
        assert_eq!(
            party_address("sip:alice@example.com"),
            "sip:alice@example.com"
        );
    }
}
