//! Personal data sealed per data subject, so that forgetting a person is destroying a key
//! (crypto-shredding; docs/privacy.md).
//!
//! A *data subject* is a person the platform holds data about (a phone user, a WhatsApp
//! contact, an admin user, a CRM customer), named by a UUID. Each subject has one or more
//! *data keys* (256-bit, random), kept in the command side's `subject_keys` table sealed
//! with a *master key* from the settings. A personal field of an event is stored as text
//! that names its subject and key:
//!
//! ```text
//! pii1.{subject uuid}.{key uuid}.{URL-safe base64 of nonce ‖ ciphertext ‖ tag}
//! ```
//!
//! XChaCha20-Poly1305 with a random 24-byte nonce per field, and the text before the last
//! dot as associated data, so a sealed field cannot be relabelled with another subject or
//! key. Once a subject's keys are destroyed, every field sealed for them reads as
//! [`ERASED`] — in the store, on the bus, in backups and in any rebuild.
//!
//! This module is pure (no I/O): the format, data keys, master keys and the walk over an
//! event's JSON. The PostgreSQL-backed key table and its cache are `keyring` (feature
//! `privacy`).

use std::collections::{BTreeSet, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

use crate::sealed::{SealingKey, Unsealable};

/// What every sealed personal field starts with (the format's version).
pub const PREFIX: &str = "pii1.";
/// What a personal field reads as once its subject was erased.
pub const ERASED: &str = "[erased]";
/// Nonce bytes of XChaCha20-Poly1305.
const NONCE: usize = 24;
/// The label master keys are derived under (unrelated to the credentials key of the same
/// secret).
const MASTER_LABEL: &str = "personal-data-master-key";

/// A sealed field, parsed (not opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedField<'a> {
    /// Whose data it is.
    pub subject: Uuid,
    /// The data key that sealed it.
    pub key: Uuid,
    /// The text before the ciphertext (`pii1.{subject}.{key}`), the associated data.
    label: &'a str,
    /// The ciphertext, base64.
    body: &'a str,
}

impl<'a> SealedField<'a> {
    /// `text` as a sealed field, or `None` when it is not one (plain text).
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(3, '.');
        let subject = Uuid::try_parse(parts.next()?).ok()?;
        let key = Uuid::try_parse(parts.next()?).ok()?;
        let body = parts.next()?;
        let label = &text[..text.len() - body.len() - 1];
        Some(Self {
            subject,
            key,
            label,
            body,
        })
    }
}

/// True for text in the sealed form.
pub fn is_sealed(text: &str) -> bool {
    SealedField::parse(text).is_some()
}

/// The subject id of the person `id` of kind `kind` names at `tenant`: `id` itself when it
/// is a UUID (phone users, admin users, customers); otherwise (a contact's phone number) a
/// name-based UUID of kind, tenant and id, the same in every process.
pub fn subject_id(kind: &str, tenant: &str, id: &str) -> Uuid {
    if let Ok(uuid) = Uuid::try_parse(id) {
        return uuid;
    }
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"platform/data-subject");
    Uuid::new_v5(
        &namespace,
        format!("{kind}\u{0}{tenant}\u{0}{id}").as_bytes(),
    )
}

/// One subject's data key, ready to seal and open.
#[derive(Clone)]
pub struct DataKey {
    /// The key's id.
    pub id: Uuid,
    /// Whose key it is.
    pub subject: Uuid,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// A sealed field could not be opened with the key it names: it was altered, or the key
/// is not the one that sealed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the personal field cannot be opened with its key")]
pub struct Unopenable;

impl DataKey {
    /// A new random key for `subject`, and its raw bytes (to be sealed for storage).
    pub fn generate(subject: Uuid) -> (Self, Vec<u8>) {
        let raw = XChaCha20Poly1305::generate_key(&mut OsRng);
        let key = Self {
            id: Uuid::new_v4(),
            subject,
            cipher: XChaCha20Poly1305::new(&raw),
        };
        (key, raw.to_vec())
    }

    /// The key `id` of `subject` from its raw bytes; `None` unless they are 32 bytes.
    pub fn from_raw(id: Uuid, subject: Uuid, raw: &[u8]) -> Option<Self> {
        let cipher = XChaCha20Poly1305::new_from_slice(raw).ok()?;
        Some(Self {
            id,
            subject,
            cipher,
        })
    }

    /// `plain` sealed for the key's subject: a new nonce every time.
    pub fn seal(&self, plain: &str) -> String {
        let label = format!("{PREFIX}{}.{}", self.subject, self.id);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: label.as_bytes(),
        };
        // Encryption into a Vec fails only past the cipher's length limit (256 GiB).
        let sealed = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{label}.{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The text `field` holds; refused unless this key sealed it, unaltered.
    pub fn open(&self, field: &SealedField<'_>) -> Result<String, Unopenable> {
        if field.key != self.id || field.subject != self.subject {
            return Err(Unopenable);
        }
        let bytes = URL_SAFE_NO_PAD.decode(field.body).map_err(|_| Unopenable)?;
        if bytes.len() < NONCE {
            return Err(Unopenable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE);
        let payload = Payload {
            msg: ciphertext,
            aad: field.label.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| Unopenable)?;
        String::from_utf8(plain).map_err(|_| Unopenable)
    }
}

/// The master keys data keys are sealed with: the current one seals, every listed one
/// opens (so a rotation can re-seal keys sealed under an older one).
#[derive(Clone)]
pub struct MasterKeys {
    /// The id of the key that seals.
    current: String,
    /// Every key by id, the current one included.
    keys: HashMap<String, SealingKey>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

/// The id of the master key derived from the fallback secret when no master key is set.
pub const DEFAULT_MASTER_ID: &str = "default";

impl MasterKeys {
    /// The keys a `PRIVACY_MASTER_KEYS` setting lists — `id=secret` pairs separated by
    /// commas, the first the current one — or, when it is unset or empty, one key
    /// ([`DEFAULT_MASTER_ID`]) derived from `fallback` (the credentials key or the token
    /// secret). Refused: an entry without `=`, an empty or repeated id, an id with
    /// characters other than letters, digits, `-` and `_`, or an empty secret.
    pub fn parse(setting: Option<&str>, fallback: &str) -> Result<Self, String> {
        let setting = setting.map(str::trim).filter(|s| !s.is_empty());
        let Some(setting) = setting else {
            return Ok(Self::single(DEFAULT_MASTER_ID, fallback));
        };
        let mut current = None;
        let mut keys = HashMap::new();
        for entry in setting.split(',').map(str::trim) {
            let (id, secret) = entry.split_once('=').ok_or_else(|| {
                "PRIVACY_MASTER_KEYS must be a comma-separated list of id=secret".to_owned()
            })?;
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_id || secret.is_empty() {
                return Err(format!(
                    "PRIVACY_MASTER_KEYS has an entry with an invalid id or an empty secret ({})",
                    if valid_id { id } else { "id not shown" }
                ));
            }
            if keys
                .insert(id.to_owned(), SealingKey::derive_for(MASTER_LABEL, secret))
                .is_some()
            {
                return Err(format!("PRIVACY_MASTER_KEYS names the key {id} twice"));
            }
            current.get_or_insert_with(|| id.to_owned());
        }
        let current = current.ok_or("PRIVACY_MASTER_KEYS lists no key")?;
        Ok(Self { current, keys })
    }

    /// The master keys of a service's settings, the same in every service:
    /// `PRIVACY_MASTER_KEYS`, or one key derived from `CREDENTIALS_KEY`, or without it from
    /// the token secret.
    pub fn from_settings(
        master_keys: Option<&str>,
        credentials_key: Option<&str>,
        token_secret: Option<&str>,
    ) -> Result<Self, String> {
        let fallback = credentials_key
            .filter(|k| !k.is_empty())
            .or(token_secret)
            .filter(|k| !k.is_empty());
        match fallback {
            Some(fallback) => Self::parse(master_keys, fallback),
            None if master_keys.is_some_and(|m| !m.trim().is_empty()) => {
                Self::parse(master_keys, "")
            }
            None => Err(
                "set PRIVACY_MASTER_KEYS (or CREDENTIALS_KEY, or the token secret it is derived from)"
                    .to_owned(),
            ),
        }
    }

    /// No master key: opens no data key (a sealed field fails to open, never reads as
    /// erased) and seals none. For a process that may meet no personal data, such as
    /// `projector rebuild` of a projection without any, run without the settings.
    pub fn none() -> Self {
        Self {
            current: String::new(),
            keys: HashMap::new(),
        }
    }

    /// One master key `id` derived from `secret`.
    pub fn single(id: &str, secret: &str) -> Self {
        Self {
            current: id.to_owned(),
            keys: HashMap::from([(id.to_owned(), SealingKey::derive_for(MASTER_LABEL, secret))]),
        }
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// `raw` (a data key) sealed under the current master key; `None` with no master key
    /// ([`MasterKeys::none`]).
    pub fn seal_key(&self, raw: &[u8]) -> Option<String> {
        self.keys
            .get(&self.current)
            .map(|master| master.seal(&URL_SAFE_NO_PAD.encode(raw)))
    }

    /// The data key sealed as `sealed` under master key `master_id`.
    pub fn open_key(&self, master_id: &str, sealed: &str) -> Result<Vec<u8>, Unsealable> {
        let master = self.keys.get(master_id).ok_or(Unsealable)?;
        let text = master.open(sealed)?;
        URL_SAFE_NO_PAD.decode(text).map_err(|_| Unsealable)
    }
}

/// Each secret a `PRIVACY_MASTER_KEYS` setting lists, named for a weak-secret check
/// (`PRIVACY_MASTER_KEYS ({id})`); a malformed entry is refused when the keys are built.
pub fn master_secrets(setting: Option<&str>) -> Vec<(String, &str)> {
    setting
        .unwrap_or_default()
        .split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(id, secret)| (format!("PRIVACY_MASTER_KEYS ({})", id.trim()), secret))
        .collect()
}

/// The data keys the sealed fields anywhere in `value` name.
pub fn keys_named(value: &serde_json::Value) -> BTreeSet<Uuid> {
    let mut keys = BTreeSet::new();
    name_into(value, &mut keys, &mut BTreeSet::new());
    keys
}

/// Adds the data keys and the subjects the sealed fields anywhere in `value` name to `keys`
/// and `subjects` (one walk of the value for both).
pub fn name_into(
    value: &serde_json::Value,
    keys: &mut BTreeSet<Uuid>,
    subjects: &mut BTreeSet<Uuid>,
) {
    visit(value, &mut |text| {
        if let Some(field) = SealedField::parse(text) {
            keys.insert(field.key);
            subjects.insert(field.subject);
        }
    });
}

fn visit(value: &serde_json::Value, f: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::String(text) => f(text),
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit(v, f)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| visit(v, f)),
        _ => {}
    }
}

/// Opens every sealed field anywhere in `value` in place with the key `key_of` gives for
/// its key id: a key it does not give (destroyed), or one that does not open the field,
/// leaves [`ERASED`]. Text that is not sealed is left as it is.
pub fn open_in_place(value: &mut serde_json::Value, key_of: &impl Fn(Uuid) -> Option<DataKey>) {
    match value {
        serde_json::Value::String(text) => {
            if let Some(field) = SealedField::parse(text) {
                let opened = key_of(field.key)
                    .and_then(|key| key.open(&field).ok())
                    .unwrap_or_else(|| ERASED.to_owned());
                *text = opened;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| open_in_place(v, key_of)),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(|v| open_in_place(v, key_of))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Uuid {
        Uuid::new_v4()
    }

    #[test]
    fn a_field_opens_with_its_subjects_key_and_names_both() {
        let (key, _) = DataKey::generate(subject());
        let sealed = key.seal("+34600111222");
        assert!(!sealed.contains("+34600111222"));
        assert!(sealed.starts_with(&format!("pii1.{}.{}.", key.subject, key.id)));
        let field = SealedField::parse(&sealed).expect("sealed form");
        assert_eq!((field.subject, field.key), (key.subject, key.id));
        assert_eq!(key.open(&field).as_deref(), Ok("+34600111222"));
        assert_ne!(sealed, key.seal("+34600111222"), "a fresh nonce each time");
        let empty = key.seal("");
        assert_eq!(
            key.open(&SealedField::parse(&empty).expect("sealed")),
            Ok(String::new())
        );
    }

    #[test]
    fn a_field_does_not_open_with_another_key_nor_relabelled_nor_altered() {
        let (key, raw) = DataKey::generate(subject());
        let (other, _) = DataKey::generate(subject());
        let sealed = key.seal("hola, soy Ana");
        let field = SealedField::parse(&sealed).expect("sealed");
        assert_eq!(other.open(&field), Err(Unopenable));
        // The same key bytes under another subject's name: the label is authenticated.
        let thief = DataKey::from_raw(key.id, other.subject, &raw).expect("32 bytes");
        let relabelled = sealed.replace(&key.subject.to_string(), &other.subject.to_string());
        assert_eq!(
            thief.open(&SealedField::parse(&relabelled).expect("sealed")),
            Err(Unopenable)
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert_eq!(
            key.open(&SealedField::parse(&altered).expect("sealed")),
            Err(Unopenable)
        );
    }

    #[test]
    fn a_subject_id_is_the_persons_uuid_or_one_named_by_kind_tenant_and_id() {
        let user = Uuid::new_v4();
        assert_eq!(subject_id("phone_user", "acme", &user.to_string()), user);
        let contact = subject_id("contact", "acme", "+34600111222");
        assert_eq!(contact, subject_id("contact", "acme", "+34600111222"));
        assert_ne!(contact, subject_id("contact", "globex", "+34600111222"));
        assert_ne!(contact, subject_id("agent", "acme", "+34600111222"));
    }

    #[test]
    fn plain_text_is_not_taken_for_a_sealed_field() {
        for plain in [
            "",
            "pii1.",
            "pii1.not-a-uuid.x.y",
            "hello",
            "pii1.00000000-0000-0000-0000-000000000000.x.y",
        ] {
            assert!(!is_sealed(plain), "{plain}");
        }
    }

    #[test]
    fn master_keys_seal_with_the_first_and_open_with_any() {
        let (_, raw) = DataKey::generate(subject());
        let old = MasterKeys::parse(Some("k1=first secret"), "fallback").expect("valid");
        let sealed = old.seal_key(&raw).expect("a master key");
        let rotated =
            MasterKeys::parse(Some("k2=second secret, k1=first secret"), "x").expect("valid");
        assert_eq!(rotated.current(), "k2");
        assert_eq!(rotated.open_key("k1", &sealed), Ok(raw.clone()));
        let resealed = rotated.seal_key(&raw).expect("a master key");
        assert_eq!(rotated.open_key("k2", &resealed), Ok(raw.clone()));
        assert_eq!(old.open_key("k2", &resealed), Err(Unsealable));
        assert_eq!(rotated.open_key("k2", &sealed), Err(Unsealable));
        let default = MasterKeys::parse(None, "fallback").expect("valid");
        assert_eq!(default.current(), DEFAULT_MASTER_ID);
        assert_eq!(
            MasterKeys::none().seal_key(&raw),
            None,
            "no master key seals nothing"
        );
        assert_eq!(
            MasterKeys::none().open_key("default", &sealed),
            Err(Unsealable)
        );
        assert_eq!(
            MasterKeys::parse(Some(" "), "fallback").map(|k| k.current().to_owned()),
            Ok(DEFAULT_MASTER_ID.to_owned())
        );
    }

    #[test]
    fn a_bad_master_key_setting_is_refused_without_showing_a_secret() {
        for bad in ["k1", "=s", "k1=", "k 1=s", "k1=a,k1=b", "k1=a,,k2=b"] {
            let refused = MasterKeys::parse(Some(bad), "f").expect_err(bad);
            assert!(
                !refused.contains("=a") && !refused.contains("=b"),
                "{refused}"
            );
        }
        let debug = format!("{:?}", MasterKeys::parse(Some("k1=topsecret"), "f"));
        assert!(!debug.contains("topsecret"), "{debug}");
    }

    #[test]
    fn a_payload_opens_in_place_and_a_destroyed_key_reads_as_erased() {
        let (ana, _) = DataKey::generate(subject());
        let (bob, _) = DataKey::generate(subject());
        let mut payload = serde_json::json!({"MessageSent": {
            "text": ana.seal("hola"),
            "author": {"name": bob.seal("Bob"), "kind": "customer"},
            "tags": [ana.seal("vip"), "plain"],
            "number": 3
        }});
        let (mut keys, mut subjects) = (BTreeSet::new(), BTreeSet::new());
        name_into(&payload, &mut keys, &mut subjects);
        assert_eq!(keys, BTreeSet::from([ana.id, bob.id]));
        assert_eq!(keys_named(&payload), keys);
        assert_eq!(subjects, BTreeSet::from([ana.subject, bob.subject]));
        let only_ana = ana.clone();
        open_in_place(&mut payload, &|id| {
            (id == only_ana.id).then(|| only_ana.clone())
        });
        assert_eq!(
            payload,
            serde_json::json!({"MessageSent": {
                "text": "hola",
                "author": {"name": ERASED, "kind": "customer"},
                "tags": ["vip", "plain"],
                "number": 3
            }})
        );
    }
}
