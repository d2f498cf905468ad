//! What SignalWire's callbacks say: LaML (Twilio-compatible) form callbacks about SMS and
//! calls, and JSON (RELAY) callbacks, which are received and recorded but not acted on yet.

use events::telephony::Direction;
use serde_json::{Map, Value};

use super::aggregate::SmsReport;
use crate::webhooks::provider::{Identity, NotProviderShaped};

/// The fields of a form callback that are kept: what identifies it and what telephony needs
/// (the caller's city, zip code and the like are dropped).
const FORM_KEPT: &[&str] = &[
    "AccountSid",
    "ApiVersion",
    "MessageSid",
    "SmsSid",
    "SmsStatus",
    "MessageStatus",
    "ErrorCode",
    "From",
    "To",
    "Body",
    "NumMedia",
    "CallSid",
    "CallStatus",
    "CallDuration",
    "Direction",
    "RecordingUrl",
    "RecordingSid",
    "RecordingDuration",
    "RecordingStatus",
    "Timestamp",
];

/// Most media of one MMS (the provider's own limit is 10).
pub const MAX_MMS_MEDIA: usize = 10;

/// Whether `name` is a kept MMS field: `MediaUrl{n}` or `MediaContentType{n}`, n < 10.
fn media_field(name: &str) -> bool {
    ["MediaUrl", "MediaContentType"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|n| n.len() == 1 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A form callback's kept parameters as a JSON object (a repeated name keeps its last
/// value). A NUL in a value — which PostgreSQL cannot store — becomes U+FFFD, so such a
/// callback is kept instead of refused.
pub fn form_payload(params: &[(String, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in params {
        if !(FORM_KEPT.contains(&k.as_str()) || media_field(k)) {
            continue;
        }
        // Kept as far as anything reads them: a body to the provider's maximum; any other
        // value longer than a URL can usefully be is no value the platform uses.
        let v = if k == "Body" {
            v.chars().take(MAX_SMS_CHARS).collect()
        } else if v.len() > MAX_FIELD_BYTES {
            continue;
        } else {
            v.clone()
        };
        map.insert(k.clone(), Value::String(v.replace('\0', "\u{fffd}")));
    }
    Value::Object(map)
}

/// The longest value other than the body kept of a form callback (a media URL is the
/// longest the platform reads).
const MAX_FIELD_BYTES: usize = 2_048;

/// Of a JSON callback: its type and the ids and states of what it is about.
pub fn json_payload(body: &Value) -> Value {
    let mut map = Map::new();
    for key in [
        "event_type",
        "event_channel",
        "timestamp",
        "project_id",
        "space_id",
    ] {
        if let Some(v) = body.get(key) {
            map.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(params) = body.get("params").and_then(Value::as_object) {
        let kept: Map<String, Value> = params
            .iter()
            .filter(|(k, _)| k.ends_with("_id") || k.ends_with("_state") || *k == "direction")
            // Ids and states are short strings; anything else is no id.
            .filter(|(_, v)| v.as_str().is_some_and(|v| v.len() <= 256))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.insert("params".into(), Value::Object(kept));
    }
    Value::Object(map)
}

fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a str> {
    payload
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

/// The longest SMS body the provider delivers: 1,600 characters, in any script (a long
/// message arrives joined from its segments).
pub const MAX_SMS_CHARS: usize = 1_600;

/// An SMS body as sent, up to [`MAX_SMS_CHARS`] characters whatever their byte length (the
/// 256-byte cap of the other fields emptied every body past it); a longer one, which no
/// provider sends, is cut there. Whitespace is kept as sent; a control character other than
/// a line break or tab (which no message shows) becomes U+FFFD.
fn body(payload: &Value) -> String {
    payload
        .get("Body")
        .and_then(Value::as_str)
        .map(|b| {
            b.chars()
                .take(MAX_SMS_CHARS)
                .map(|c| {
                    if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                        '\u{fffd}'
                    } else {
                        c
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The media an MMS names, `(url, content type)` in order (`MediaUrl0` …), at most
/// [`MAX_MMS_MEDIA`] and no more than `NumMedia` says.
fn media(payload: &Value) -> Vec<(String, Option<String>)> {
    (0..MAX_MMS_MEDIA)
        .map_while(|n| {
            let url = payload.get(format!("MediaUrl{n}"))?.as_str()?;
            let content_type = payload
                .get(format!("MediaContentType{n}"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((url.to_owned(), content_type))
        })
        .filter(|(url, _)| url.starts_with("https://") || url.starts_with("http://"))
        .collect()
}

/// The identity of a callback: its de-duplication key is the message or call, its status
/// (and a recording): a retried callback repeats them, a new status does not.
pub fn identify(payload: &Value) -> Result<Identity, NotProviderShaped> {
    if let Some(event_type) = field(payload, "event_type") {
        let params = payload.get("params").unwrap_or(&Value::Null);
        let id = ["call_id", "message_id", "segment_id"]
            .iter()
            .find_map(|k| field(params, k))
            .unwrap_or("-");
        let state = ["call_state", "message_state", "state"]
            .iter()
            .find_map(|k| field(params, k))
            .unwrap_or("-");
        return Ok(Identity {
            provider_event_id: format!("relay:{event_type}:{id}:{state}"),
            event_type: event_type.to_owned(),
            payment_id: None,
        });
    }
    if let Some(sid) = field(payload, "MessageSid").or(field(payload, "SmsSid")) {
        // Statuses are read in lower case wherever they are compared: a status spelled
        // otherwise is the same status (never a sent message's, with its sender in clear).
        let status = field(payload, "SmsStatus")
            .or(field(payload, "MessageStatus"))
            .ok_or(NotProviderShaped("an SMS callback has a status"))?
            .to_ascii_lowercase();
        let status = status.as_str();
        // Per number: a message id reused for another number is another message.
        let number = if status == "received" || SmsReport::inbound_status(status) {
            field(payload, "To")
        } else {
            field(payload, "From")
        }
        .unwrap_or("-");
        return Ok(Identity {
            provider_event_id: format!("sms:{sid}:{status}:{number}"),
            event_type: format!("sms.{status}"),
            payment_id: None,
        });
    }
    if let Some(sid) = field(payload, "CallSid") {
        let recording = field(payload, "RecordingSid");
        let (status, recording) = match (field(payload, "CallStatus"), recording) {
            (Some(status), recording) => (status, recording.unwrap_or("-")),
            // A recording callback: the recording, no call status.
            (None, Some(recording)) => ("recording", recording),
            (None, None) => {
                return Err(NotProviderShaped(
                    "a call callback has a CallStatus or a RecordingSid",
                ))
            }
        };
        return Ok(Identity {
            provider_event_id: format!("call:{sid}:{status}:{recording}"),
            event_type: format!("call.{status}"),
            payment_id: None,
        });
    }
    Err(NotProviderShaped(
        "a SignalWire callback names a message, a call or an event type",
    ))
}

/// What a callback reports, for processing.
#[derive(Debug, Clone, PartialEq)]
pub enum Callback {
    /// About SMS `sid`; `number` is the tenant's side of it.
    Sms {
        /// `MessageSid`.
        sid: String,
        /// The tenant's number.
        number: String,
        /// What happened.
        report: SmsReport,
    },
    /// About call `sid`.
    Call {
        /// `CallSid`.
        sid: String,
        /// The tenant's number (empty on a recording callback, which names none).
        number: String,
        /// The provider's status; none on a recording callback.
        status: Option<String>,
        /// The recording's `RecordingSid`.
        recording_sid: Option<String>,
        /// Which way.
        direction: Direction,
        /// Caller.
        from: String,
        /// Callee.
        to: String,
        /// Seconds, once ended.
        duration_secs: Option<u32>,
        /// The recording.
        recording_url: Option<String>,
    },
    /// Nothing the platform acts on (a JSON event).
    Other,
}

/// Reads a kept payload.
pub fn read(payload: &Value) -> Callback {
    let text = |name: &str| field(payload, name).map(str::to_owned);
    let (from, to) = (
        text("From").unwrap_or_default(),
        text("To").unwrap_or_default(),
    );
    if let Some(sid) = text("MessageSid").or(text("SmsSid")) {
        let status = text("SmsStatus")
            .or(text("MessageStatus"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if status == "received" {
            return Callback::Sms {
                sid,
                number: to.clone(),
                report: SmsReport::Received {
                    from,
                    to,
                    body: body(payload),
                    media_count: text("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0),
                    media: media(payload),
                },
            };
        }
        // The tenant's number: the recipient of one it is receiving, else the sender.
        let number = match SmsReport::inbound_status(&status) {
            true => to.clone(),
            false => from.clone(),
        };
        return Callback::Sms {
            sid,
            number,
            report: SmsReport::Status {
                status,
                error_code: text("ErrorCode"),
                from,
                to,
            },
        };
    }
    if let Some(sid) = text("CallSid") {
        let direction = if text("Direction").is_some_and(|d| d.starts_with("outbound")) {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        return Callback::Call {
            sid,
            number: match direction {
                Direction::Inbound => to.clone(),
                Direction::Outbound => from.clone(),
            },
            status: text("CallStatus"),
            recording_sid: text("RecordingSid"),
            direction,
            from,
            to,
            duration_secs: text("CallDuration")
                .or(text("RecordingDuration"))
                .and_then(|d| d.parse().ok()),
            recording_url: text("RecordingUrl"),
        };
    }
    Callback::Other
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_inbound_sms_is_keyed_by_message_and_status_and_belongs_to_the_number_called() {
        let payload = form_payload(&params(&[
            ("MessageSid", "SM1"),
            ("SmsStatus", "received"),
            ("From", "+15550001"),
            ("To", "+15550002"),
            ("Body", "Hello"),
            ("FromCity", "SPRINGFIELD"),
        ]));
        assert!(payload.get("FromCity").is_none(), "location is dropped");
        let id = identify(&payload).expect("shaped");
        assert_eq!(id.provider_event_id, "sms:SM1:received:+15550002");
        let Callback::Sms { number, report, .. } = read(&payload) else {
            panic!("an sms")
        };
        assert_eq!(number, "+15550002");
        assert!(matches!(report, SmsReport::Received { ref body, .. } if body == "Hello"));
    }

    #[test]
    fn a_long_sms_in_any_script_arrives_whole_up_to_the_providers_maximum() {
        let long = "Привет, мир! 👋 "
            .repeat(200)
            .chars()
            .take(MAX_SMS_CHARS)
            .collect::<String>();
        assert!(long.len() > 256 * 4, "far past the other fields' byte cap");
        let received = |text: &str| {
            let payload = form_payload(&params(&[
                ("MessageSid", "SM9"),
                ("SmsStatus", "received"),
                ("From", "+15550001"),
                ("To", "+15550002"),
                ("Body", text),
            ]));
            match read(&payload) {
                Callback::Sms {
                    report: SmsReport::Received { body, .. },
                    ..
                } => body,
                _ => panic!("an sms"),
            }
        };
        assert_eq!(received(&long), long);
        let longer = format!("{long}and more");
        assert_eq!(received(&longer), long, "cut at the provider's maximum");
    }

    #[test]
    fn a_status_callback_belongs_to_the_number_that_sent() {
        let payload = form_payload(&params(&[
            ("MessageSid", "SM2"),
            ("MessageStatus", "delivered"),
            ("From", "+15550002"),
            ("To", "+15550001"),
        ]));
        let Callback::Sms { number, report, .. } = read(&payload) else {
            panic!("an sms")
        };
        assert_eq!(number, "+15550002");
        assert_eq!(report.other_party(), "+15550001", "whom it was sent to");
        // A message the tenant's number is receiving: its sender is the other party.
        let payload = form_payload(&params(&[
            ("MessageSid", "SM3"),
            ("SmsStatus", "receiving"),
            ("From", "+15550009"),
            ("To", "+15550001"),
        ]));
        let Callback::Sms { number, report, .. } = read(&payload) else {
            panic!("an sms")
        };
        assert_eq!(number, "+15550001");
        assert_eq!(report.other_party(), "+15550009");
        let identity = identify(&payload).expect("an sms");
        assert_eq!(identity.provider_event_id, "sms:SM3:receiving:+15550001");
        // However the status is spelled.
        for (status, received) in [("RECEIVING", false), ("Received", true)] {
            let payload = form_payload(&params(&[
                ("MessageSid", "SM4"),
                ("SmsStatus", status),
                ("From", "+15550009"),
                ("To", "+15550001"),
                ("Body", "hi"),
            ]));
            let Callback::Sms { number, report, .. } = read(&payload) else {
                panic!("an sms")
            };
            assert_eq!(number, "+15550001", "{status}");
            assert_eq!(report.other_party(), "+15550009", "{status}");
            assert_eq!(matches!(report, SmsReport::Received { .. }), received);
        }
    }

    #[test]
    fn calls_are_keyed_by_status_and_recording() {
        let payload = form_payload(&params(&[
            ("CallSid", "CA1"),
            ("CallStatus", "completed"),
            ("CallDuration", "42"),
            ("Direction", "outbound-api"),
            ("From", "+15550002"),
            ("To", "+15550001"),
            ("RecordingSid", "RE1"),
            ("RecordingUrl", "https://rec/RE1"),
        ]));
        assert_eq!(
            identify(&payload).expect("shaped").provider_event_id,
            "call:CA1:completed:RE1"
        );
        // A recording callback names the recording and no status.
        let recording = form_payload(&params(&[
            ("CallSid", "CA1"),
            ("RecordingSid", "RE2"),
            ("RecordingUrl", "https://rec/RE2"),
            ("RecordingStatus", "completed"),
            ("RecordingDuration", "40"),
        ]));
        assert_eq!(
            identify(&recording).expect("shaped").provider_event_id,
            "call:CA1:recording:RE2"
        );
        let Callback::Call {
            status,
            recording_sid,
            duration_secs,
            ..
        } = read(&recording)
        else {
            panic!("a call")
        };
        assert_eq!(
            (status, recording_sid.as_deref(), duration_secs),
            (None, Some("RE2"), Some(40))
        );
        let Callback::Call {
            number,
            direction,
            duration_secs,
            ..
        } = read(&payload)
        else {
            panic!("a call")
        };
        assert_eq!(
            (number.as_str(), direction, duration_secs),
            ("+15550002", Direction::Outbound, Some(42))
        );
    }

    #[test]
    fn a_message_id_reused_for_another_number_is_another_callback() {
        let on = |to: &str| {
            identify(&form_payload(&params(&[
                ("MessageSid", "SM7"),
                ("SmsStatus", "received"),
                ("From", "+15550001"),
                ("To", to),
            ])))
            .expect("shaped")
            .provider_event_id
        };
        assert_ne!(on("+15550002"), on("+15550003"));
    }

    #[test]
    fn mms_media_nul_and_control_characters_are_kept_readably() {
        let payload = form_payload(&params(&[
            ("MessageSid", "MM1"),
            ("SmsStatus", "received"),
            ("From", "+15550001"),
            ("To", "+15550002"),
            ("Body", "  a\0b\u{7}\n "),
            ("NumMedia", "2"),
            ("MediaUrl0", "https://media.example/1"),
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl1", "https://media.example/2"),
            ("MediaUrl12", "https://media.example/12"),
            ("MediaUrlX", "https://media.example/x"),
        ]));
        assert!(events::jsonb::first_nul(&payload).is_none(), "storable");
        assert!(payload.get("MediaUrl12").is_none() && payload.get("MediaUrlX").is_none());
        let Callback::Sms {
            report: SmsReport::Received { body, media, .. },
            ..
        } = read(&payload)
        else {
            panic!("an sms")
        };
        assert_eq!(body, "  a\u{fffd}b\u{fffd}\n ", "whitespace kept as sent");
        assert_eq!(
            media,
            vec![
                (
                    "https://media.example/1".to_owned(),
                    Some("image/jpeg".to_owned())
                ),
                ("https://media.example/2".to_owned(), None)
            ]
        );
    }

    #[test]
    fn callbacks_naming_nothing_are_refused() {
        assert!(identify(&json!({"From": "+1"})).is_err());
        assert!(identify(&json!({"MessageSid": "SM1"})).is_err());
    }
}
