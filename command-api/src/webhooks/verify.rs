//! Signature checks of provider webhooks, over the raw bytes as received and in constant
//! time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::values::unhex as hex;

type HmacSha256 = Hmac<Sha256>;

/// How far a Stripe signature's timestamp may be from now, either way (Stripe's libraries
/// use 300 s for the past; a timestamp as far in the future is as suspect).
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

/// Why a webhook was refused (401, and a line in the rejection log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No signature header or field.
    #[error("missing_signature")]
    Missing,
    /// A signature that cannot be parsed.
    #[error("malformed_signature")]
    Malformed,
    /// No signature matches any configured secret.
    #[error("bad_signature")]
    Mismatch,
    /// A valid signature on a timestamp outside the tolerance (a replay).
    #[error("stale_timestamp")]
    Stale,
    /// An algorithm or key name the provider does not use.
    #[error("unsupported_algorithm")]
    Unsupported,
    /// No secret is configured for this provider: nothing can be verified.
    #[error("not_configured")]
    NotConfigured,
}

impl Rejection {
    /// The stable code (problem+json `code` and the rejection log's reason).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Missing => "missing_signature",
            Rejection::Malformed => "malformed_signature",
            Rejection::Mismatch => "bad_signature",
            Rejection::Stale => "stale_timestamp",
            Rejection::Unsupported => "unsupported_algorithm",
            Rejection::NotConfigured => "not_configured",
        }
    }
}

/// Whether `signature` is the HMAC-SHA256 of `parts` (concatenated) under `key`.
fn matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(signature).is_ok()
}

/// Checks a `Stripe-Signature` header (`t=…,v1=…[,v1=…][,v0=…]`) over `body` against each of
/// `secrets` (several during a rotation): HMAC-SHA256 of `"{t}.{body}"`, any `v1` matching
/// any secret, with `t` within [`STRIPE_TOLERANCE_SECS`] of `now`. Other schemes are ignored
/// (Stripe's advice against downgrades). The timestamp is checked after the signature, so a
/// stale answer is only given to a genuine (replayed) request.
pub fn stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: i64,
) -> Result<i64, Rejection> {
    if secrets.is_empty() {
        return Err(Rejection::NotConfigured);
    }
    let header = header.ok_or(Rejection::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| Rejection::Malformed)?),
            Some(("v1", s)) => signatures.push(hex(s).ok_or(Rejection::Malformed)?),
            Some(_) => {}
            None => return Err(Rejection::Malformed),
        }
    }
    let t = timestamp.ok_or(Rejection::Malformed)?;
    if signatures.is_empty() {
        return Err(Rejection::Malformed);
    }
    let prefix = format!("{t}.");
    let genuine = secrets.iter().any(|secret| {
        signatures
            .iter()
            .any(|s| matches(secret.as_bytes(), &[prefix.as_bytes(), body], s))
    });
    if !genuine {
        return Err(Rejection::Mismatch);
    }
    if (now - t).abs() > STRIPE_TOLERANCE_SECS {
        return Err(Rejection::Stale);
    }
    Ok(t)
}

/// The fields of a Lyra notification (IPN or browser return), form-decoded.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct LyraForm {
    /// The payment, as a JSON string.
    #[serde(rename = "kr-answer")]
    pub answer: Option<String>,
    /// Hex HMAC-SHA256 of `kr-answer`.
    #[serde(rename = "kr-hash")]
    pub hash: Option<String>,
    /// `sha256_hmac`.
    #[serde(rename = "kr-hash-algorithm")]
    pub algorithm: Option<String>,
    /// Which key signed it: `password` (IPN) or `sha256_hmac` (browser return).
    #[serde(rename = "kr-hash-key")]
    pub key: Option<String>,
    /// `V4/Payment`.
    #[serde(rename = "kr-answer-type")]
    pub answer_type: Option<String>,
}

/// Checks a Lyra notification's `kr-hash`: hex HMAC-SHA256 of `kr-answer`, keyed with the
/// REST password when `kr-hash-key` is `password` (the IPN, server to server) and with the
/// HMAC-SHA-256 key when it is `sha256_hmac` (the browser return). As Lyra's SDKs do, an
/// escaped `\/` in the answer is read as `/` before hashing. Returns the verified answer.
pub fn lyra(
    form: &LyraForm,
    password: Option<&str>,
    hmac_key: Option<&str>,
) -> Result<String, Rejection> {
    let (Some(answer), Some(hash)) = (&form.answer, &form.hash) else {
        return Err(Rejection::Missing);
    };
    if form
        .algorithm
        .as_deref()
        .is_some_and(|a| a != "sha256_hmac")
    {
        return Err(Rejection::Unsupported);
    }
    let key = match form.key.as_deref() {
        Some("password") | None => password,
        Some("sha256_hmac") => hmac_key,
        Some(_) => return Err(Rejection::Unsupported),
    };
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or(Rejection::NotConfigured)?;
    let signature = hex(hash).ok_or(Rejection::Malformed)?;
    let answer = answer.replace("\\/", "/");
    if matches(key.as_bytes(), &[answer.as_bytes()], &signature) {
        Ok(answer)
    } else {
        Err(Rejection::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_signature_of_the_raw_body_by_any_app_secret() {
        // printf '{"object":"whatsapp_business_account"}' | openssl dgst -sha256 -hmac app-secret
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let header = "sha256=0bf7374433906636bed1653bc7c64affb42fa5da9a39e251ab95c2e3a9c06923";
        let secrets = vec!["other".to_owned(), "app-secret".to_owned()];
        assert_eq!(whatsapp(Some(header), body, &secrets), Ok(()));
        assert_eq!(
            whatsapp(Some(header), b"{}", &secrets),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            whatsapp(Some(header), body, &["other".to_owned()]),
            Err(Rejection::Mismatch)
        );
        assert_eq!(whatsapp(None, body, &secrets), Err(Rejection::Missing));
        assert_eq!(
            whatsapp(Some("sha1=00"), body, &secrets),
            Err(Rejection::Unsupported)
        );
        assert_eq!(
            whatsapp(Some("sha256=zz"), body, &secrets),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            whatsapp(Some(header), body, &[]),
            Err(Rejection::NotConfigured)
        );
    }

    // Vectors computed independently (Python's hmac and `openssl dgst -sha256 -hmac`); the
    // Lyra keys are the public demo shop's, published with Lyra's SDKs.
    const STRIPE_BODY: &str = r#"{"id":"evt_test_webhook","object":"event"}"#;
    const STRIPE_SIG: &str = "d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";
    const LYRA_ANSWER: &str = r#"{"shopId":"69876357","orderCycle":"CLOSED","orderStatus":"PAID","serverDate":"2026-01-15T10:00:00+00:00","orderDetails":{"orderTotalAmount":990,"orderEffectiveAmount":990,"orderCurrency":"EUR","mode":"TEST","orderId":"myOrderId-475882","_type":"V4/OrderDetails"},"transactions":[{"uuid":"1c8356b0e24442b2acc579cf1ae4d814","amount":990,"currency":"EUR","paymentMethodType":"CARD","status":"PAID","detailedStatus":"AUTHORISED","operationType":"DEBIT","_type":"V4/PaymentTransaction"}],"_type":"V4/Payment"}"#;
    const LYRA_PASSWORD: &str = "testpassword_DEMOPRIVATEKEY23G4475zXZQ2UA5x7M";
    const LYRA_HMAC_KEY: &str = "38453613e7f44dc58732bad3dca2bca3";
    const LYRA_IPN_HASH: &str = "f9bcc2c69e4970656f2b61f2a75a713a809818b43df50b1f5f63caf43846c367";
    const LYRA_RETURN_HASH: &str =
        "19c9a4259d1d35fea6b2d92377c7e30649fe540f896cede45bee59b425685ca6";

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn stripe_accepts_the_reference_vector_and_any_rotated_secret() {
        let header = format!("t=1700000000,v1={STRIPE_SIG}");
        let now = 1_700_000_100;
        let one = secrets(&["whsec_test_secret"]);
        assert_eq!(
            stripe(Some(&header), STRIPE_BODY.as_bytes(), &one, now),
            Ok(1_700_000_000)
        );
        let rotated = secrets(&["whsec_new", "whsec_test_secret"]);
        assert!(stripe(Some(&header), STRIPE_BODY.as_bytes(), &rotated, now).is_ok());
        let several = format!("t=1700000000,v1={},v1={STRIPE_SIG},v0=00", "ab".repeat(32));
        assert!(stripe(Some(&several), STRIPE_BODY.as_bytes(), &one, now).is_ok());
    }

    #[test]
    fn stripe_refuses_tampering_staleness_and_nonsense() {
        let one = secrets(&["whsec_test_secret"]);
        let header = format!("t=1700000000,v1={STRIPE_SIG}");
        let body = STRIPE_BODY.as_bytes();
        let tampered = br#"{"id":"evt_test_webhook","object":"evenT"}"#;
        assert_eq!(
            stripe(Some(&header), tampered, &one, 1_700_000_000),
            Err(Rejection::Mismatch)
        );
        let other_time = format!("t=1700000001,v1={STRIPE_SIG}");
        assert_eq!(
            stripe(Some(&other_time), body, &one, 1_700_000_000),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            stripe(Some(&header), body, &one, 1_700_000_301),
            Err(Rejection::Stale)
        );
        assert_eq!(
            stripe(Some(&header), body, &one, 1_699_999_699),
            Err(Rejection::Stale)
        );
        assert_eq!(stripe(None, body, &one, 0), Err(Rejection::Missing));
        assert_eq!(
            stripe(Some("garbage"), body, &one, 0),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            stripe(
                Some(&format!("t=1700000000,v0={STRIPE_SIG}")),
                body,
                &one,
                0
            ),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            stripe(Some(&header), body, &[], 1_700_000_000),
            Err(Rejection::NotConfigured)
        );
    }

    fn form(hash: &str, key: &str) -> LyraForm {
        LyraForm {
            answer: Some(LYRA_ANSWER.to_owned()),
            hash: Some(hash.to_owned()),
            algorithm: Some("sha256_hmac".into()),
            key: Some(key.to_owned()),
            answer_type: Some("V4/Payment".into()),
        }
    }

    #[test]
    fn lyra_checks_the_ipn_with_the_password_and_the_return_with_the_hmac_key() {
        let keys = (Some(LYRA_PASSWORD), Some(LYRA_HMAC_KEY));
        assert_eq!(
            lyra(&form(LYRA_IPN_HASH, "password"), keys.0, keys.1).as_deref(),
            Ok(LYRA_ANSWER)
        );
        assert!(lyra(&form(LYRA_RETURN_HASH, "sha256_hmac"), keys.0, keys.1).is_ok());
        // Each key signs only its own path.
        assert_eq!(
            lyra(&form(LYRA_RETURN_HASH, "password"), keys.0, keys.1),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            lyra(&form(LYRA_IPN_HASH, "sha256_hmac"), keys.0, keys.1),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn lyra_reads_escaped_slashes_as_its_sdks_do() {
        let mut f = form(LYRA_IPN_HASH, "password");
        f.answer = Some(LYRA_ANSWER.replace('/', "\\/"));
        assert!(lyra(&f, Some(LYRA_PASSWORD), None).is_ok());
    }

    #[test]
    fn lyra_refuses_tampering_and_unknown_algorithms() {
        let mut f = form(LYRA_IPN_HASH, "password");
        f.answer = Some(LYRA_ANSWER.replace("990", "9"));
        assert_eq!(
            lyra(&f, Some(LYRA_PASSWORD), None),
            Err(Rejection::Mismatch)
        );
        let mut f = form(LYRA_IPN_HASH, "password");
        f.algorithm = Some("md5".into());
        assert_eq!(
            lyra(&f, Some(LYRA_PASSWORD), None),
            Err(Rejection::Unsupported)
        );
        let f = form("zz", "password");
        assert_eq!(
            lyra(&f, Some(LYRA_PASSWORD), None),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            lyra(&LyraForm::default(), Some(LYRA_PASSWORD), None),
            Err(Rejection::Missing)
        );
        assert_eq!(
            lyra(&form(LYRA_IPN_HASH, "password"), None, None),
            Err(Rejection::NotConfigured)
        );
    }
}

/// Checks a shared secret sent in a header (AssemblyAI's `webhook_auth_header_value`) in
/// constant time: both are reduced to HMACs under one key and the tags compared, so neither
/// their contents nor their lengths show in the timing.
pub fn secret_header(provided: Option<&str>, expected: &[String]) -> Result<(), Rejection> {
    let expected: Vec<&String> = expected.iter().filter(|e| !e.is_empty()).collect();
    if expected.is_empty() {
        return Err(Rejection::NotConfigured);
    }
    let provided = provided.ok_or(Rejection::Missing)?;
    let tag = |value: &str| {
        HmacSha256::new_from_slice(b"webhook-secret-comparison").map(|mut m| {
            m.update(value.as_bytes());
            m
        })
    };
    // Every secret is compared (no early exit), in constant time each.
    let matched = expected.iter().fold(false, |matched, secret| {
        let same = match (tag(secret), tag(provided)) {
            (Ok(expected_tag), Ok(provided_mac)) => provided_mac
                .verify_slice(&expected_tag.finalize().into_bytes())
                .is_ok(),
            _ => false,
        };
        matched | same
    });
    if matched {
        Ok(())
    } else {
        Err(Rejection::Mismatch)
    }
}

/// Verifies Meta's `X-Hub-Signature-256: sha256=<hex>` header: HMAC-SHA256 of the raw
/// body keyed by an app secret; any of `secrets` (the app secrets of the sessions the body
/// names, and the platform's) may have signed it.
pub fn whatsapp(header: Option<&str>, body: &[u8], secrets: &[String]) -> Result<(), Rejection> {
    if secrets.is_empty() {
        return Err(Rejection::NotConfigured);
    }
    let header = header.ok_or(Rejection::Missing)?;
    let (scheme, value) = header.split_once('=').ok_or(Rejection::Malformed)?;
    if scheme != "sha256" {
        return Err(Rejection::Unsupported);
    }
    let signature = hex(value)
        .filter(|s| s.len() == 32)
        .ok_or(Rejection::Malformed)?;
    let matches = secrets.iter().any(|secret| {
        HmacSha256::new_from_slice(secret.as_bytes())
            .map(|mut mac| {
                mac.update(body);
                mac.verify_slice(&signature).is_ok()
            })
            .unwrap_or(false)
    });
    matches.then_some(()).ok_or(Rejection::Mismatch)
}

type HmacSha1 = Hmac<sha1::Sha1>;

/// The body of a SignalWire callback, as its signature covers it.
#[derive(Debug, Clone, Copy)]
pub enum SignalwireBody<'a> {
    /// `application/x-www-form-urlencoded` parameters (LaML / compatibility callbacks).
    Form(&'a [(String, String)]),
    /// A JSON body, as received.
    Json(&'a [u8]),
}

/// `url` with its scheme's default port added, and without any port: SignalWire (like
/// Twilio) may have signed either, so both are tried.
fn port_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let (authority, tail) = rest
        .find(['/', '?'])
        .map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let with_port = if host == authority {
        format!("{scheme}://{host}:{default_port}{tail}")
    } else {
        url.to_owned()
    };
    let without_port = format!("{scheme}://{host}{tail}");
    if with_port == without_port {
        vec![without_port]
    } else {
        vec![without_port, with_port]
    }
}

/// What Twilio's scheme signs after the URL: each parameter name followed by its value, by
/// name, a name's distinct values sorted.
fn sorted_params(params: &[(String, String)]) -> String {
    let mut by_name: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        std::collections::BTreeMap::new();
    for (k, v) in params {
        by_name.entry(k).or_default().insert(v);
    }
    let mut out = String::new();
    for (k, values) in by_name {
        for v in values {
            out.push_str(k);
            out.push_str(v);
        }
    }
    out
}

fn sha1_matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(signature).is_ok()
}

/// Checks a SignalWire signature (`X-SignalWire-Signature`, or `X-Twilio-Signature` on
/// compatibility callbacks) against each of `keys` (the project's signing key; several during
/// a rotation), for the public `url` the provider called, with and without its port:
/// - form callbacks: base64 HMAC-SHA1 of the URL followed by the sorted parameters (names and
///   values), as Twilio signs;
/// - JSON callbacks: hex HMAC-SHA1 of the URL followed by the raw body; or, in Twilio's
///   scheme for JSON, base64 HMAC-SHA1 of the URL alone when the URL carries `bodySHA256`,
///   the hex SHA-256 of the body.
pub fn signalwire(
    signature: Option<&str>,
    url: &str,
    body: SignalwireBody<'_>,
    keys: &[String],
) -> Result<(), Rejection> {
    if keys.is_empty() {
        return Err(Rejection::NotConfigured);
    }
    let signature = signature.map(str::trim).ok_or(Rejection::Missing)?;
    use base64::Engine;
    let as_base64 = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()
        .filter(|s| s.len() == 20);
    let as_hex = hex(signature).filter(|s| s.len() == 20);
    if as_base64.is_none() && as_hex.is_none() {
        return Err(Rejection::Malformed);
    }
    let urls = port_variants(url);
    let genuine = keys.iter().any(|key| {
        let key = key.as_bytes();
        urls.iter().any(|u| match body {
            SignalwireBody::Form(params) => as_base64.as_deref().is_some_and(|sig| {
                sha1_matches(key, &[u.as_bytes(), sorted_params(params).as_bytes()], sig)
            }),
            SignalwireBody::Json(raw) => {
                let hex_scheme = as_hex
                    .as_deref()
                    .is_some_and(|sig| sha1_matches(key, &[u.as_bytes(), raw], sig));
                let body_hash_scheme = as_base64.as_deref().is_some_and(|sig| {
                    body_sha256_param(u).is_some_and(|h| h.eq_ignore_ascii_case(&hex_sha256(raw)))
                        && sha1_matches(key, &[u.as_bytes()], sig)
                });
                hex_scheme || body_hash_scheme
            }
        })
    });
    if genuine {
        Ok(())
    } else {
        Err(Rejection::Mismatch)
    }
}

/// The `bodySHA256` query parameter of `url`, if any.
fn body_sha256_param(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("bodySHA256="))
}

/// Hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::values::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod signalwire_tests {
    use super::*;

    #[test]
    fn a_secret_header_matches_only_the_secret() {
        let one = ["s3cret".to_owned()];
        assert_eq!(secret_header(Some("s3cret"), &one), Ok(()));
        assert_eq!(secret_header(Some("s3cre"), &one), Err(Rejection::Mismatch));
        assert_eq!(secret_header(None, &one), Err(Rejection::Missing));
        assert_eq!(secret_header(Some("x"), &[]), Err(Rejection::NotConfigured));
        assert_eq!(
            secret_header(Some("x"), &[String::new()]),
            Err(Rejection::NotConfigured)
        );
        // During a rotation, either secret.
        let rotating = ["new-secret".to_owned(), "old-secret".to_owned()];
        assert_eq!(secret_header(Some("old-secret"), &rotating), Ok(()));
        assert_eq!(secret_header(Some("new-secret"), &rotating), Ok(()));
        assert_eq!(
            secret_header(Some("other"), &rotating),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn urls_are_tried_with_and_without_their_port() {
        assert_eq!(
            port_variants("https://example.com/api?x=1"),
            [
                "https://example.com/api?x=1",
                "https://example.com:443/api?x=1"
            ]
        );
        assert_eq!(
            port_variants("http://example.com:8080/api"),
            ["http://example.com/api", "http://example.com:8080/api"]
        );
    }

    #[test]
    fn parameters_are_signed_sorted_by_name_then_value() {
        let params = vec![
            ("To".to_owned(), "+2".to_owned()),
            ("Body".to_owned(), "hi".to_owned()),
            ("Media".to_owned(), "b".to_owned()),
            ("Media".to_owned(), "a".to_owned()),
        ];
        assert_eq!(sorted_params(&params), "BodyhiMediaaMediabTo+2");
    }
}
