//! Bearer tokens: HS256 JWTs signed with `NEST_AUTH_SECRET` (fallback `NEXTAUTH_SECRET`).
//! Claims `sub`, `tenant_id`, `role` (admins) or `kind = "phone"` (chatbot users), `iat`,
//! `exp`, `jti`, `sid` (an admin's session), and the platform's `iss` and `aud`. Verification is pure CPU so both APIs share it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What an admin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operates the platform: every tenant.
    SuperAdmin,
    /// Administers one tenant.
    TenantAdmin,
    /// Works the inbox of one tenant.
    Agent,
}

/// The claims of a token, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The tenant the user belongs to (absent for a super admin of the platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Admin role; absent on phone tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `phone` for chatbot users; absent on admin tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Issued at (seconds since the epoch).
    #[serde(default)]
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The session (refresh-token family) an admin token belongs to; introspection answers
    /// inactive once it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A signed-in admin.
    Admin {
        /// User id.
        user_id: String,
        /// Home tenant, if any.
        tenant_id: Option<String>,
        /// Role.
        role: Role,
    },
    /// A chatbot user signed in by phone.
    Phone {
        /// User id.
        user_id: String,
        /// The tenant whose chatbot they use.
        tenant_id: String,
    },
    /// A component of the platform calling another (the scheduler delivering a due
    /// message). Its tokens are minted from the shared secret by the component itself.
    Service {
        /// The component's name.
        name: String,
    },
}

impl Principal {
    /// The user id.
    pub fn user_id(&self) -> &str {
        match self {
            Principal::Admin { user_id, .. } | Principal::Phone { user_id, .. } => user_id,
            Principal::Service { name } => name,
        }
    }

    /// The kind of actor its events record.
    pub fn actor_kind(&self) -> crate::envelope::ActorKind {
        use crate::envelope::ActorKind;
        match self {
            Principal::Admin { .. } => ActorKind::Admin,
            Principal::Phone { .. } => ActorKind::Phone,
            Principal::Service { .. } => ActorKind::System,
        }
    }

    /// True for a super admin.
    pub fn is_super_admin(&self) -> bool {
        matches!(
            self,
            Principal::Admin {
                role: Role::SuperAdmin,
                ..
            }
        )
    }

    /// True when this principal may act as staff (any admin role) of `tenant_id`.
    pub fn is_staff_of(&self, tenant_id: &str) -> bool {
        match self {
            Principal::Admin {
                role: Role::SuperAdmin,
                ..
            } => true,
            Principal::Admin {
                tenant_id: Some(home),
                ..
            } => home == tenant_id,
            _ => false,
        }
    }

    /// True when this principal administers `tenant_id` (super admin, or its tenant admin).
    pub fn administers(&self, tenant_id: &str) -> bool {
        match self {
            Principal::Admin {
                role: Role::SuperAdmin,
                ..
            } => true,
            Principal::Admin {
                role: Role::TenantAdmin,
                tenant_id: Some(home),
                ..
            } => home == tenant_id,
            _ => false,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token was sent.
    #[error("a bearer token is required")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// Bad signature, bad shape, wrong algorithm or incoherent claims.
    #[error("the token is not valid")]
    Invalid,
}

/// Why `value` cannot serve as a secret outside development, if it cannot: empty, a
/// published default (the development defaults all say `change-me`), shorter than 32
/// characters, or made of fewer than 10 different characters (an HMAC key or a
/// key-derivation input needs the entropy).
pub fn weak_secret(value: &str) -> Option<&'static str> {
    let lowered = value.to_ascii_lowercase();
    if value.trim().is_empty() {
        Some("empty")
    } else if lowered.contains("change-me") || lowered.contains("changeme") {
        Some("a published default")
    } else if value.chars().count() < 32 {
        Some("shorter than 32 characters")
    } else if value
        .chars()
        .collect::<std::collections::HashSet<_>>()
        .len()
        < 10
    {
        Some("made of fewer than 10 different characters")
    } else {
        None
    }
}

/// Checks the named secrets a service was given (`None`: not set, nothing to check) and
/// names the first weak one, unless development secrets are allowed (`ALLOW_DEV_SECRETS`).
pub fn check_secrets(secrets: &[(&str, Option<&str>)], allow_dev: bool) -> Result<(), String> {
    if allow_dev {
        return Ok(());
    }
    for (name, value) in secrets {
        if let Some(why) = value.and_then(weak_secret) {
            return Err(format!(
                "{name} is {why}: set a random value of 32 or more characters \
                 (ALLOW_DEV_SECRETS=true accepts it on a development machine)"
            ));
        }
    }
    Ok(())
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
const LEEWAY_SECS: i64 = 5;

/// The `iss` of every token the platform signs, and the only one it accepts.
pub const TOKEN_ISSUER: &str = "platform-identity";
/// The `aud` of every token the platform signs (both APIs), and the only one it accepts: a
/// token another application signed with a shared secret is not one of ours.
pub const TOKEN_AUDIENCE: &str = "platform-api";

/// Claims as signed: the platform's issuer and audience beside the claims.
#[derive(Serialize)]
struct Signed<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    iss: &'static str,
    aud: &'static str,
}

/// Verifies (and, for tests and the identity service, issues) tokens.
#[derive(Clone)]
pub struct TokenKeys {
    /// Key for verification.
    decoding: DecodingKey,
    /// Key for signing.
    encoding: EncodingKey,
    /// HS256 only, `exp`, `iss` and `aud` required, no leeway beyond a few seconds of clock
    /// skew.
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys from the shared secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies a token and says who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_claims(token).map(|(_, principal)| principal)
    }

    /// Verifies a token and returns its claims as signed (for introspection).
    pub fn claims(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_claims(token).map(|(claims, _)| claims)
    }

    /// Verifies a token: its claims as signed, and who it speaks for.
    pub fn verify_claims(&self, token: &str) -> Result<(Claims, Principal), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let c = data.claims;
        // Issued in the future (beyond the clock skew allowed): not a token this platform made.
        if c.iat > chrono::Utc::now().timestamp() + LEEWAY_SECS {
            return Err(TokenError::Invalid);
        }
        let principal = match (c.role, c.kind.as_deref()) {
            (Some(role), None) => Principal::Admin {
                user_id: c.sub.clone(),
                tenant_id: c.tenant_id.clone(),
                role,
            },
            (None, Some("phone")) => Principal::Phone {
                user_id: c.sub.clone(),
                tenant_id: c.tenant_id.clone().ok_or(TokenError::Invalid)?,
            },
            (None, Some("service")) if c.tenant_id.is_none() => Principal::Service {
                name: c.sub.clone(),
            },
            _ => return Err(TokenError::Invalid),
        };
        Ok((c, principal))
    }

    /// Signs claims (HS256), with the platform's issuer and audience.
    pub fn sign(&self, claims: &Claims) -> String {
        let signed = Signed {
            claims,
            iss: TOKEN_ISSUER,
            aud: TOKEN_AUDIENCE,
        };
        // Encoding HS256 over serializable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &signed, &self.encoding)
            .unwrap_or_default()
    }

    /// An admin token valid for `ttl_secs`, as the identity service (and tests) issue it.
    pub fn admin_token(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
        role: Role,
        ttl_secs: i64,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            sub: user_id.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
            role: Some(role),
            kind: None,
            iat: now,
            exp: now + ttl_secs,
            jti: Some(uuid::Uuid::new_v4().to_string()),
            sid: None,
        })
    }

    /// A token for a platform component calling another, valid for `ttl_secs`.
    pub fn service_token(&self, name: &str, ttl_secs: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            sub: name.to_owned(),
            tenant_id: None,
            role: None,
            kind: Some("service".to_owned()),
            iat: now,
            exp: now + ttl_secs,
            jti: Some(uuid::Uuid::new_v4().to_string()),
            sid: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_admin_token_verifies() {
        let keys = TokenKeys::new("secret");
        let t = keys.admin_token("u1", Some("t1"), Role::TenantAdmin, 60);
        let p = keys.verify(&t).expect("valid");
        assert!(p.administers("t1"));
        assert!(!p.administers("t2"));
        assert!(!p.is_super_admin());
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let t = TokenKeys::new("other").admin_token("u1", None, Role::SuperAdmin, 60);
        assert_eq!(
            TokenKeys::new("secret").verify(&t),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn an_expired_token_is_expired() {
        let keys = TokenKeys::new("secret");
        let t = keys.admin_token("u1", None, Role::SuperAdmin, -60);
        assert_eq!(keys.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_issued_or_valid_only_in_the_future_is_invalid() {
        let keys = TokenKeys::new("secret");
        let now = chrono::Utc::now().timestamp();
        let claims = |iat: i64| Claims {
            sub: "u1".into(),
            tenant_id: None,
            role: Some(Role::SuperAdmin),
            kind: None,
            iat,
            exp: now + 3600,
            jti: None,
            sid: None,
        };
        assert_eq!(
            keys.verify(&keys.sign(&claims(now + 600))),
            Err(TokenError::Invalid),
            "issued ten minutes from now"
        );
        assert!(keys.verify(&keys.sign(&claims(now))).is_ok());
        // `nbf` is not a claim the platform issues, but one it honours.
        let mut raw = serde_json::to_value(claims(now)).expect("json");
        raw["iss"] = serde_json::json!(TOKEN_ISSUER);
        raw["aud"] = serde_json::json!(TOKEN_AUDIENCE);
        raw["nbf"] = serde_json::json!(now + 600);
        let early = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &raw,
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("signed");
        assert_eq!(keys.verify(&early), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_without_the_platforms_issuer_and_audience_is_invalid() {
        let keys = TokenKeys::new("secret");
        let now = chrono::Utc::now().timestamp();
        let token = |iss: Option<&str>, aud: Option<&str>| {
            let mut raw = serde_json::json!({"sub": "u1", "role": "super_admin", "iat": now, "exp": now + 600});
            if let Some(iss) = iss {
                raw["iss"] = serde_json::json!(iss);
            }
            if let Some(aud) = aud {
                raw["aud"] = serde_json::json!(aud);
            }
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &raw,
                &EncodingKey::from_secret(b"secret"),
            )
            .expect("signed")
        };
        assert!(keys
            .verify(&token(Some(TOKEN_ISSUER), Some(TOKEN_AUDIENCE)))
            .is_ok());
        for (iss, aud) in [
            (None, None),
            (Some(TOKEN_ISSUER), None),
            (None, Some(TOKEN_AUDIENCE)),
            (Some("another-app"), Some(TOKEN_AUDIENCE)),
            (Some(TOKEN_ISSUER), Some("another-api")),
        ] {
            assert_eq!(
                keys.verify(&token(iss, aud)),
                Err(TokenError::Invalid),
                "{iss:?} {aud:?}"
            );
        }
    }

    #[test]
    fn defaults_short_and_empty_secrets_are_refused_unless_development_allows_them() {
        assert_eq!(weak_secret(""), Some("empty"));
        assert_eq!(
            weak_secret("dev-secret-change-me"),
            Some("a published default")
        );
        assert_eq!(
            weak_secret("test-secret-of-the-backbone"),
            Some("shorter than 32 characters")
        );
        assert_eq!(weak_secret("k3Jx9vQ2mW8pL5tR7yB1nC4hF6dS0aZe"), None);
        assert_eq!(
            weak_secret(&"a".repeat(40)),
            Some("made of fewer than 10 different characters")
        );
        let given = [
            ("NEST_AUTH_SECRET", Some("k3Jx9vQ2mW8pL5tR7yB1nC4hF6dS0aZe")),
            ("CREDENTIALS_KEY", None),
            ("SOKETI_APP_SECRET", Some("dev-soketi-secret-change-me")),
        ];
        let refused = check_secrets(&given, false).expect_err("refused");
        assert!(
            refused.starts_with("SOKETI_APP_SECRET is a published default"),
            "{refused}"
        );
        assert_eq!(check_secrets(&given, true), Ok(()));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(
            TokenKeys::new("s").verify("a.b.c"),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_service_token_speaks_for_a_component_of_no_tenant() {
        let keys = TokenKeys::new("secret");
        let p = keys
            .verify(&keys.service_token("scheduler", 60))
            .expect("valid");
        assert_eq!(
            p,
            Principal::Service {
                name: "scheduler".into()
            }
        );
        assert!(!p.is_staff_of("t1"));
        assert!(!p.administers("t1"));
    }

    #[test]
    fn agents_are_staff_but_do_not_administer() {
        let keys = TokenKeys::new("secret");
        let p = keys
            .verify(&keys.admin_token("u", Some("t1"), Role::Agent, 60))
            .expect("valid");
        assert!(p.is_staff_of("t1"));
        assert!(!p.administers("t1"));
    }
}
