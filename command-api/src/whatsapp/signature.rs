//! The signature of WhatsApp deliveries: Meta's `X-Hub-Signature-256` (and a bridge's
//! `X-Bridge-Signature`, the same scheme), HMAC-SHA256 of the raw body.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::values::unhex as hex;
use crate::webhooks::verify::Rejection;

type HmacSha256 = Hmac<Sha256>;

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
}
