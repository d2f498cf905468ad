//! Realtime: the channels and events clients subscribe to (through Soketi, which speaks the
//! Pusher protocol, or through query-api's SSE stream), and the two signatures of the Pusher
//! protocol. docs/realtime.md lists every channel and event.
//!
//! - A channel subscription is authorised by a signature over `socket_id:channel_name` (and,
//!   for presence channels, `:channel_data`), HMAC-SHA256 with the app secret, answered as
//!   `key:hex` ([`channel_auth`]).
//! - A connection signs in as a user (`pusher:signin`) with a signature over
//!   `socket_id::user::user_data` ([`user_auth`]); the user is named by [`ConnectionUser`].
//!   Events are delivered to signed-in users only, so a revocation both stops their
//!   delivery and ends exactly the connections it concerns (the HTTP API's
//!   `terminate_connections`).
//! - A server publishing through the HTTP API signs the method, path and sorted query
//!   (which includes the body's MD5) the same way ([`signed_query`]).

use crate::hex::encode as hex;
use hmac::{Hmac, Mac};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The core NATS subject prefix realtime events are fanned out on, for SSE:
/// `{prefix}.{tenant_id}` (core NATS, not JetStream: they are ephemeral).
pub const DEFAULT_SUBJECT_PREFIX: &str = "realtime";

/// A channel of ours: who may see an event (its audience, which SSE streams and the
/// realtime worker read), and, for the two that clients join through the authorizer, a
/// Pusher channel.
///
/// Events never travel on joinable channels: a Pusher subscription, once authorised, lasts
/// as long as the socket, whatever happens to the access that authorised it. The realtime
/// worker delivers each event to the signed-in connections of the members of its audience
/// who may see it now ([`ConnectionUser::delivery_channel`]); the joinable channels carry
/// only what members send each other (typing) and who is online.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `private-tenant-{tenant_id}`: everything of a tenant, for its dashboard (staff).
    /// An audience, not joinable.
    Tenant(String),
    /// `presence-tenant-{tenant_id}`: which of a tenant's agents are online (staff).
    /// Joinable.
    TenantPresence(String),
    /// `private-thread-{thread_id}`: one thread (its participants and the tenant's staff).
    /// Joinable for client events (typing); as an audience, the thread's events.
    Thread(String),
    /// `private-user-{user_id}`: what concerns one user (that user only). An audience, not
    /// joinable.
    User(String),
}

impl Channel {
    /// Parses a channel name; `None` for names that are not ours.
    pub fn parse(name: &str) -> Option<Self> {
        let id_ok = |id: &str| {
            !id.is_empty()
                && id.len() <= 150
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '@' | ','))
        };
        let (channel, id) = if let Some(id) = name.strip_prefix("private-tenant-") {
            (Channel::Tenant(id.to_owned()), id)
        } else if let Some(id) = name.strip_prefix("presence-tenant-") {
            (Channel::TenantPresence(id.to_owned()), id)
        } else if let Some(id) = name.strip_prefix("private-thread-") {
            (Channel::Thread(id.to_owned()), id)
        } else if let Some(id) = name.strip_prefix("private-user-") {
            (Channel::User(id.to_owned()), id)
        } else {
            return None;
        };
        id_ok(id).then_some(channel)
    }

    /// True for the channels a client may subscribe to through the authorizer.
    pub fn joinable(&self) -> bool {
        matches!(self, Channel::TenantPresence(_) | Channel::Thread(_))
    }

    /// The channel's name.
    pub fn name(&self) -> String {
        match self {
            Channel::Tenant(id) => format!("private-tenant-{id}"),
            Channel::TenantPresence(id) => format!("presence-tenant-{id}"),
            Channel::Thread(id) => format!("private-thread-{id}"),
            Channel::User(id) => format!("private-user-{id}"),
        }
    }
}

/// One realtime event as it travels to Soketi and, on core NATS, to SSE streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealtimeEvent {
    /// `{aggregate_type}:{aggregate_id}:{sequence}` of the stored event it comes from; a
    /// client that sees an id twice (a redelivery after a crash) drops the repeat.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// Channel names it goes to.
    pub channels: Vec<String>,
    /// The event name, e.g. `message.created`.
    pub name: String,
    /// The event's data (sent to Pusher clients as a JSON string).
    pub data: serde_json::Value,
}

/// True for a socket id of the shape Pusher servers hand out (`123.456`).
pub fn valid_socket_id(socket_id: &str) -> bool {
    let Some((a, b)) = socket_id.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

fn hmac_hex(secret: &str, message: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The `auth` value that lets `socket_id` subscribe to `channel`: `key:HMAC-SHA256(secret,
/// "socket_id:channel[:channel_data]")` in hex.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{key}:{}", hmac_hex(secret, &message))
}

/// The `auth` value that signs `socket_id` in as the user of `user_data` (a JSON string with
/// an `id`): `key:HMAC-SHA256(secret, "socket_id::user::user_data")` in hex.
pub fn user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    format!(
        "{key}:{}",
        hmac_hex(secret, &format!("{socket_id}::user::{user_data}"))
    )
}

/// Who a realtime connection signed in as: the unit events are delivered to and a
/// revocation ends. An admin's connection is its session, so a logout ends that session's
/// connections and not the user's others; a chatbot user's is the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionUser {
    /// An admin session (the token's `sid`).
    Session(String),
    /// A chatbot user.
    Phone(String),
}

impl ConnectionUser {
    /// The Pusher user id (URL-safe: ids are UUIDs and hex digests).
    pub fn id(&self) -> String {
        match self {
            ConnectionUser::Session(sid) => format!("session-{sid}"),
            ConnectionUser::Phone(id) => format!("phone-{id}"),
        }
    }

    /// The channel that reaches the connections signed in as this user, and only those
    /// (the Pusher protocol's `#server-to-user-{id}`: a socket that merely subscribes to
    /// the name receives nothing).
    pub fn delivery_channel(&self) -> String {
        format!("#server-to-user-{}", self.id())
    }
}

/// The query string of a signed HTTP API request: `auth_key`, `auth_timestamp`,
/// `auth_version`, `body_md5` and `auth_signature` over `"{method}\n{path}\n{sorted query}"`.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
) -> String {
    // Already in key order, as the signature requires.
    let query = format!(
        "auth_key={key}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
        hex(&Md5::digest(body))
    );
    let signature = hmac_hex(secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={signature}")
}

/// SHA-256 in hex, for tests and callers that compare signatures.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_channel_names_round_trip_and_others_are_refused() {
        for name in [
            "private-tenant-0b6f6d1e-2f3c-4c5d-9e8f-0a1b2c3d4e5f",
            "presence-tenant-t1",
            "private-thread-abc",
            "private-user-u_1",
        ] {
            assert_eq!(
                Channel::parse(name).map(|c| c.name()),
                Some(name.to_owned())
            );
        }
        for name in [
            "private-tenant-",
            "public-tenant-t1",
            "private-encrypted-tenant-t1",
            "presence-thread-t1",
            "private-thread-a b",
            "private-thread-a.b",
            "",
        ] {
            assert_eq!(Channel::parse(name), None, "{name}");
        }
    }

    #[test]
    fn clients_join_only_presence_and_thread_channels() {
        let joinable: Vec<bool> = [
            "private-tenant-t1",
            "presence-tenant-t1",
            "private-thread-a",
            "private-user-u",
        ]
        .iter()
        .filter_map(|name| Channel::parse(name))
        .map(|c| c.joinable())
        .collect();
        assert_eq!(joinable, [false, true, true, false]);
        assert_eq!(
            ConnectionUser::Session("s1".into()).delivery_channel(),
            "#server-to-user-session-s1"
        );
    }

    #[test]
    fn socket_ids_have_the_pusher_shape() {
        assert!(valid_socket_id("123.456"));
        assert!(!valid_socket_id("123"));
        assert!(!valid_socket_id("1.2.3"));
        assert!(!valid_socket_id("abc.def"));
        assert!(!valid_socket_id(".1"));
    }

    /// The example of the Pusher protocol's documentation ("Authenticating users" /
    /// "private channels").
    #[test]
    fn channel_auth_matches_the_protocol_example() {
        assert_eq!(
            channel_auth(
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
                "1234.1234",
                "private-foobar",
                None
            ),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    /// The example of the Pusher HTTP API reference ("Generating authentication
    /// signatures").
    #[test]
    fn signed_query_matches_the_http_api_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = signed_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "POST",
            "/apps/3/events",
            body,
            1353088179,
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
