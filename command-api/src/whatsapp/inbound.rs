//! What a WhatsApp Cloud API webhook says: a delivery (`object: whatsapp_business_account`)
//! batches entries, changes, messages and statuses; the platform keeps each message and each
//! status as a webhook of its own, so each is de-duplicated by the provider's id and
//! processed on its own (a repeat of a batch, or a batch overlapping an earlier one, adds
//! only what is new).

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

/// One message or status of a delivery, in the form the webhook aggregate keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The de-duplication key: `message:{phone_number_id}:{wamid}` or
    /// `status:{phone_number_id}:{wamid}:{status}`.
    pub provider_event_id: String,
    /// `message.{type}` or `status.{status}`.
    pub event_type: String,
    /// `{phone_number_id, display_phone_number, contact?, message | status}`.
    pub payload: Value,
}

/// The phone number ids a delivery concerns (to find the sessions whose app secret signs it).
pub fn phone_number_ids(delivery: &Value) -> Vec<String> {
    let mut ids: Vec<String> = changes(delivery)
        .filter_map(|v| {
            v.pointer("/metadata/phone_number_id")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn changes(delivery: &Value) -> impl Iterator<Item = &Value> {
    delivery
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e.get("changes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c.get("value"))
}

/// The messages and statuses of a delivery, or why it is not one.
pub fn items(delivery: &Value) -> Result<Vec<Item>, &'static str> {
    if delivery.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err("Not a WhatsApp Business Account delivery (object).");
    }
    if !delivery.get("entry").is_some_and(Value::is_array) {
        return Err("A delivery has entries (entry).");
    }
    let mut items = Vec::new();
    for value in changes(delivery) {
        let Some(number) = value
            .pointer("/metadata/phone_number_id")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let display = value.pointer("/metadata/display_phone_number").cloned();
        let contacts = value.get("contacts").and_then(Value::as_array);
        for message in value
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = text(message, "id")
                .filter(|id| id.len() <= 256)
                .ok_or("A message has an id (at most 256 characters).")?;
            let from = text(message, "from").unwrap_or_default();
            let kind = text(message, "type").unwrap_or("unknown");
            let contact = contacts.and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("wa_id").and_then(Value::as_str) == Some(from))
                    .or(cs.first())
            });
            items.push(Item {
                provider_event_id: format!("message:{number}:{id}"),
                event_type: format!("message.{kind}"),
                payload: json!({
                    "phone_number_id": number,
                    "display_phone_number": display,
                    "contact": contact.map(|c| json!({
                        "wa_id": c.get("wa_id"),
                        "name": c.pointer("/profile/name"),
                    })),
                    "message": message,
                }),
            });
        }
        for status in value
            .get("statuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = text(status, "id")
                .filter(|id| id.len() <= 256)
                .ok_or("A status has an id (at most 256 characters).")?;
            let name = text(status, "status")
                .filter(|s| s.len() <= 32)
                .ok_or("A status has a status.")?;
            // A status names the message and its state; the same state reported again is
            // the same webhook.
            items.push(Item {
                provider_event_id: format!("status:{number}:{id}:{name}"),
                event_type: format!("status.{name}"),
                payload: json!({
                    "phone_number_id": number,
                    "display_phone_number": display,
                    "status": status,
                }),
            });
        }
    }
    Ok(items)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A contact's WhatsApp id as the provider writes it: digits, or a business-scoped user id
/// (`US.13491208655302741918`); anything else names nobody.
fn contact_id<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    text(v, key)
        .filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
}

/// The provider's time `raw` (a string of Unix seconds).
pub fn timestamp(raw: Option<&Value>) -> Option<DateTime<Utc>> {
    let secs = match raw? {
        Value::String(s) => s.parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    Utc.timestamp_opt(secs, 0).single()
}

/// An inbound message, read from its webhook's `message` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The provider's id.
    pub wamid: String,
    /// The sender's WhatsApp id.
    pub from: String,
    /// The provider's type.
    pub kind: String,
    /// Its type's object (`text`, `image` …), or `{}`.
    pub content: Value,
    /// What a thread shows of it.
    pub text: String,
    /// The message it replies or reacts to.
    pub context_wamid: Option<String>,
    /// When the contact sent it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Reads a kept `message` object.
pub fn message(message: &Value) -> Option<Message> {
    let wamid = text(message, "id")?.to_owned();
    let from = contact_id(message, "from")
        .or_else(|| contact_id(message, "from_user_id"))?
        .to_owned();
    let kind = text(message, "type").unwrap_or("unknown").to_owned();
    let content = message.get(&kind).cloned().unwrap_or_else(|| json!({}));
    let context_wamid = match kind.as_str() {
        "reaction" => content.get("message_id").and_then(Value::as_str),
        _ => message.pointer("/context/id").and_then(Value::as_str),
    }
    .map(str::to_owned);
    Some(Message {
        text: render(&kind, &content, message),
        wamid,
        from,
        kind,
        content,
        context_wamid,
        sent_at: timestamp(message.get("timestamp")),
    })
}

/// What a thread shows of a message of type `kind` with content `c`.
fn render(kind: &str, c: &Value, message: &Value) -> String {
    let s = |p: &str| {
        c.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let labelled = |label: &str, detail: Option<&str>| match detail {
        Some(d) => format!("[{label}] {d}"),
        None => format!("[{label}]"),
    };
    let rendered = match kind {
        "text" => s("/body").unwrap_or_default().to_owned(),
        "image" => labelled("image", s("/caption")),
        "video" => labelled("video", s("/caption")),
        "audio" if c.get("voice").and_then(Value::as_bool) == Some(true) => "[voice note]".into(),
        "audio" => "[audio]".into(),
        "document" => labelled("document", s("/caption").or(s("/filename"))),
        "sticker" => "[sticker]".into(),
        "location" => {
            let lat = c
                .get("latitude")
                .and_then(Value::as_f64)
                .unwrap_or_default();
            let lon = c
                .get("longitude")
                .and_then(Value::as_f64)
                .unwrap_or_default();
            let place = [s("/name"), s("/address")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            match place.is_empty() {
                true => format!("[location] {lat}, {lon}"),
                false => format!("[location] {place} ({lat}, {lon})"),
            }
        }
        "contacts" => {
            let names: Vec<&str> = c
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.pointer("/name/formatted_name").and_then(Value::as_str))
                .collect();
            labelled(
                "contacts",
                Some(&names.join(", "))
                    .filter(|n| !n.is_empty())
                    .map(String::as_str),
            )
        }
        "interactive" => match c.get("type").and_then(Value::as_str) {
            Some("button_reply") => s("/button_reply/title").unwrap_or_default().to_owned(),
            Some("list_reply") => s("/list_reply/title").unwrap_or_default().to_owned(),
            Some("nfm_reply") => "[form submitted]".into(),
            _ => "[interactive reply]".into(),
        },
        "button" => s("/text").unwrap_or_default().to_owned(),
        "reaction" => match s("/emoji") {
            Some(emoji) => format!("[reaction] {emoji}"),
            None => "[reaction removed]".into(),
        },
        _ => {
            let code = message
                .pointer("/errors/0/code")
                .and_then(Value::as_i64)
                .map(|c| format!(" (code {c})"));
            format!("[unsupported message{}]", code.unwrap_or_default())
        }
    };
    if rendered.trim().is_empty() {
        format!("[{kind}]")
    } else {
        rendered
    }
}

/// A delivery status, read from its webhook's `status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The provider's id of the message.
    pub wamid: String,
    /// The recipient's WhatsApp id.
    pub recipient: String,
    /// The status's name.
    pub status: String,
    /// The platform's id, echoed.
    pub callback: Option<String>,
    /// The first error's code.
    pub error_code: Option<String>,
    /// The first error's title.
    pub error_title: Option<String>,
    /// When it happened.
    pub at: Option<DateTime<Utc>>,
}

/// Reads a kept `status` object.
pub fn status(status: &Value) -> Option<Status> {
    let error = status.pointer("/errors/0");
    Some(Status {
        wamid: text(status, "id")?.to_owned(),
        recipient: contact_id(status, "recipient_id")
            .or_else(|| contact_id(status, "recipient_user_id"))?
            .to_owned(),
        status: text(status, "status")?.to_owned(),
        callback: text(status, "biz_opaque_callback_data").map(str::to_owned),
        error_code: error.and_then(|e| match e.get("code")? {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        }),
        error_title: error
            .and_then(|e| e.get("title").or(e.get("message")))
            .and_then(Value::as_str)
            .map(str::to_owned),
        at: timestamp(status.get("timestamp")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
            "changes": [{"field": "messages", "value": value}]}]})
    }

    #[test]
    fn a_batch_becomes_one_item_per_message_and_status() {
        let body = delivery(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": [
                {"from": "16505551234", "id": "wamid.A", "timestamp": "1749416383", "type": "text",
                 "text": {"body": "Does it come in another color?"}},
                {"from": "16505551234", "id": "wamid.B", "timestamp": "1749416384", "type": "location",
                 "location": {"latitude": 37.46, "longitude": -122.21, "name": "HQ"}}
            ],
            "statuses": [{"id": "wamid.OUT", "status": "delivered", "timestamp": "1749416385",
                          "recipient_id": "16505551234"}]
        }));
        let items = items(&body).expect("a delivery");
        let keys: Vec<_> = items.iter().map(|i| i.provider_event_id.as_str()).collect();
        assert_eq!(
            keys,
            [
                "message:106540352242922:wamid.A",
                "message:106540352242922:wamid.B",
                "status:106540352242922:wamid.OUT:delivered"
            ]
        );
        assert_eq!(items[0].payload["contact"]["name"], "Sheena Nelson");
        assert_eq!(phone_number_ids(&body), ["106540352242922"]);
        let m = message(&items[1].payload["message"]).expect("a message");
        assert_eq!(m.text, "[location] HQ (37.46, -122.21)");
        assert_eq!(m.sent_at.map(|t| t.timestamp()), Some(1749416384));
    }

    #[test]
    fn every_kind_renders_for_the_thread() {
        let cases = [
            (
                json!({"type": "image", "image": {"id": "1", "caption": "Look"}}),
                "[image] Look",
            ),
            (
                json!({"type": "audio", "audio": {"id": "1", "voice": true}}),
                "[voice note]",
            ),
            (
                json!({"type": "document", "document": {"id": "1", "filename": "a.pdf"}}),
                "[document] a.pdf",
            ),
            (
                json!({"type": "sticker", "sticker": {"id": "1"}}),
                "[sticker]",
            ),
            (
                json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "Chandler Bing"}}]}),
                "[contacts] Chandler Bing",
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "y", "title": "Yes"}}}),
                "Yes",
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "2", "title": "Tuesday"}}}),
                "Tuesday",
            ),
            (
                json!({"type": "button", "button": {"payload": "p", "text": "Stop promotions"}}),
                "Stop promotions",
            ),
            (
                json!({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}}),
                "[reaction] 👍",
            ),
            (
                json!({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": ""}}),
                "[reaction removed]",
            ),
            (
                json!({"type": "unsupported", "errors": [{"code": 131051}]}),
                "[unsupported message (code 131051)]",
            ),
        ];
        for (mut raw, shown) in cases {
            raw["id"] = json!("wamid.Z");
            raw["from"] = json!("16505551234");
            let m = message(&raw).expect("a message");
            assert_eq!(m.text, shown);
        }
        let reaction = json!({"id": "wamid.R", "from": "1", "type": "reaction",
                              "reaction": {"message_id": "wamid.X", "emoji": "👍"}});
        assert_eq!(
            message(&reaction).and_then(|m| m.context_wamid).as_deref(),
            Some("wamid.X")
        );
    }

    #[test]
    fn a_failed_status_keeps_the_providers_error() {
        let s = status(
            &json!({"id": "wamid.H", "status": "failed", "timestamp": "1744609253",
            "recipient_id": "86501452171734", "biz_opaque_callback_data": "m-1",
            "errors": [{"code": 131047, "title": "Re-engagement message"}]}),
        )
        .expect("a status");
        assert_eq!(s.error_code.as_deref(), Some("131047"));
        assert_eq!(s.error_title.as_deref(), Some("Re-engagement message"));
        assert_eq!(s.callback.as_deref(), Some("m-1"));
    }

    #[test]
    fn what_is_not_a_delivery_is_refused() {
        assert!(items(&json!({"object": "page", "entry": []})).is_err());
        assert!(items(&json!({"object": "whatsapp_business_account"})).is_err());
        let no_id = delivery(json!({"metadata": {"phone_number_id": "1"},
                                    "messages": [{"from": "1", "type": "text"}]}));
        assert!(items(&no_id).is_err());
    }
}
