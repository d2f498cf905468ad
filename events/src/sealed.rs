//! Secrets sealed for storage: provider credentials live in events and read models only as
//! ciphertext (docs/architecture.md, invariant 7). XChaCha20-Poly1305 with a random 24-byte nonce
//! per seal, under a key derived from the operator's `CREDENTIALS_KEY` (or, when unset,
//! from the token secret), so the processes that need a credential in clear — command-api
//! checking it, the projector's WhatsApp sender using it — open it with the same setting
//! and nothing else can.
//!
//! The sealed form is text: `v1.` and the URL-safe base64 of nonce ‖ ciphertext ‖ tag.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The version prefix of the sealed form.
const PREFIX: &str = "v1.";
/// Nonce bytes of XChaCha20-Poly1305.
const NONCE: usize = 24;

/// The key secrets are sealed with.
#[derive(Clone)]
pub struct SealingKey(XChaCha20Poly1305);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(…)")
    }
}

/// A sealed value could not be opened: another key sealed it, or it was altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sealed value cannot be opened with this key")]
pub struct Unsealable;

impl SealingKey {
    /// The key derived from `secret` (any length; SHA-256 under a label, so the same
    /// string used as the token secret gives an unrelated key).
    pub fn derive(secret: &str) -> Self {
        Self::derive_for("credentials-sealing-key", secret)
    }

    /// The key derived from `secret` for one use, named by `label`: the same secret under
    /// two labels gives two unrelated keys.
    pub fn derive_for(label: &str, secret: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update(label.as_bytes());
        digest.update(b"\0");
        digest.update(secret.as_bytes());
        let key = digest.finalize();
        Self(XChaCha20Poly1305::new(&key))
    }

    /// `plain` sealed: a new random nonce every time, so equal secrets seal differently.
    pub fn seal(&self, plain: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption into a Vec fails only past the cipher's length limit (256 GiB).
        let sealed = self.0.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The value `sealed` holds.
    pub fn open(&self, sealed: &str) -> Result<String, Unsealable> {
        let body = sealed.strip_prefix(PREFIX).ok_or(Unsealable)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| Unsealable)?;
        if bytes.len() < NONCE {
            return Err(Unsealable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE);
        let plain = self
            .0
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| Unsealable)?;
        String::from_utf8(plain).map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let key = SealingKey::derive("operator key");
        let sealed = key.seal("EAAG-token");
        assert!(!sealed.contains("EAAG-token"));
        assert_eq!(key.open(&sealed).as_deref(), Ok("EAAG-token"));
        assert_ne!(sealed, key.seal("EAAG-token"), "a fresh nonce each time");
        assert_eq!(SealingKey::derive("other").open(&sealed), Err(Unsealable));
    }

    #[test]
    fn an_altered_sealed_value_is_refused() {
        let key = SealingKey::derive("k");
        let sealed = key.seal("secret");
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(key.open(&altered), Err(Unsealable));
        assert_eq!(key.open("v1.short"), Err(Unsealable));
        assert_eq!(key.open("plain"), Err(Unsealable));
    }
}

/// The fields of events that hold a secret in some form (sealed credentials, digests a
/// secret could be checked against): `(aggregate type, event type, field)`. They stay in
/// the store and on the bus for the processes that need them, and are never shown in an
/// answer (the audit trail replaces them with [`REDACTED`]).
pub const SECRET_FIELDS: &[(&str, &str, &str)] = &[
    (
        crate::whatsapp::WHATSAPP_SESSION,
        "Connected",
        "credentials",
    ),
    (
        crate::whatsapp::WHATSAPP_SESSION,
        "Connected",
        "verify_token_sha256",
    ),
    (crate::identity::PHONE_LOGIN, "CodeIssued", "code_hash"),
];

/// What a secret field reads as where it is shown.
pub const REDACTED: &str = "[redacted]";

/// Parts of a field name that mark a secret wherever it appears: a second line of defence
/// behind [`SECRET_FIELDS`], so a secret added to an event later under a telling name is
/// not shown before someone lists it.
const SECRET_NAME_PARTS: &[&str] = &[
    "secret",
    "password",
    "credential",
    "private_key",
    "api_key",
    "access_token",
    "refresh_token",
    "verify_token",
    "code_hash",
];

/// True for a field name that reads like a secret's.
pub fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

fn redact_telling_names(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if looks_secret(name) {
                    *field = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact_telling_names(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_telling_names),
        _ => {}
    }
}

/// Replaces the secret fields of one event's payload (`{"<event type>": {fields}}`, as
/// stored) with [`REDACTED`]: those [`SECRET_FIELDS`] lists, and any field anywhere whose
/// name reads like a secret's ([`looks_secret`]).
pub fn redact(aggregate_type: &str, event_type: &str, payload: &mut serde_json::Value) {
    redact_telling_names(payload);
    for (_, _, field) in SECRET_FIELDS
        .iter()
        .filter(|(t, e, _)| *t == aggregate_type && *e == event_type)
    {
        if let Some(value) = payload
            .get_mut(event_type)
            .and_then(|fields| fields.get_mut(*field))
        {
            *value = serde_json::Value::String(REDACTED.to_owned());
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn a_field_named_like_a_secret_is_redacted_in_any_event_and_proofs_are_kept() {
        let mut payload = serde_json::json!({"Configured": {
            "provider": {"api_key": "sk_live_1", "name": "mail"},
            "accounts": [{"client_secret": "s", "id": 1}],
            "smtp_password": "p",
            "body_sha256": "00ff",
            "webhook_id": "w1"
        }});
        redact("a_future_context", "Configured", &mut payload);
        assert_eq!(
            payload,
            serde_json::json!({"Configured": {
                "provider": {"api_key": REDACTED, "name": "mail"},
                "accounts": [{"client_secret": REDACTED, "id": 1}],
                "smtp_password": REDACTED,
                "body_sha256": "00ff",
                "webhook_id": "w1"
            }})
        );
    }

    #[test]
    fn a_sessions_credentials_and_verify_digest_are_redacted_and_the_rest_kept() {
        let mut payload = serde_json::json!({"Connected": {
            "tenant_id": "t", "credentials": "v1.abc", "verify_token_sha256": "00ff", "phone_number_id": "1"
        }});
        redact(crate::whatsapp::WHATSAPP_SESSION, "Connected", &mut payload);
        assert_eq!(
            payload,
            serde_json::json!({"Connected": {
                "tenant_id": "t", "credentials": REDACTED, "verify_token_sha256": REDACTED, "phone_number_id": "1"
            }})
        );
        let mut other = serde_json::json!({"Disconnected": {"at": "x"}});
        redact(
            crate::whatsapp::WHATSAPP_SESSION,
            "Disconnected",
            &mut other,
        );
        assert_eq!(other, serde_json::json!({"Disconnected": {"at": "x"}}));
    }

    #[test]
    fn every_secret_field_names_a_field_its_event_has() {
        // The list is checked against the events' own serialised form, so a renamed field
        // cannot slip out of the redaction unnoticed.
        let at = chrono::Utc::now();
        let forms = [
            serde_json::to_value(crate::whatsapp::SessionEvent::Connected {
                tenant_id: "t".into(),
                transport: crate::whatsapp::Transport::Cloud,
                phone_number_id: "1".into(),
                business_account_id: None,
                display_phone_number: None,
                verified_name: None,
                credentials: "v1.x".into(),
                verify_token_sha256: "00".into(),
                at,
            }),
            serde_json::to_value(crate::identity::PhoneLoginEvent::CodeIssued {
                code_hash: "00".into(),
                at,
                expires_at: at,
            }),
        ];
        for (_, event_type, field) in SECRET_FIELDS {
            let found = forms.iter().flatten().any(|form| {
                form.get(*event_type)
                    .and_then(|fields| fields.get(*field))
                    .is_some()
            });
            assert!(found, "{event_type}.{field} is a field of its event");
        }
    }
}
