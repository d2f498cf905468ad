//! The signatures of the payment providers' webhooks: Stripe's `Stripe-Signature` and
//! Lyra's `kr-hash`, checked over the raw bytes as received, in constant time.

use crate::values::unhex as hex;
use crate::webhooks::verify::{hmac_sha256_matches as matches, Rejection};

/// How far a Stripe signature's timestamp may be from now, either way (Stripe's libraries
/// use 300 s for the past; a timestamp as far in the future is as suspect).
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

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
