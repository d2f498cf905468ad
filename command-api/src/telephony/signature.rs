//! The signature of SignalWire callbacks: Twilio's scheme (HMAC-SHA1 of the public URL and
//! the sorted parameters, or of the URL and the raw JSON body), with and without the port.

use hmac::{Hmac, Mac};

use crate::values::unhex as hex;
use crate::webhooks::verify::{hex_sha256, Rejection};

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

#[cfg(test)]
mod tests {
    use super::*;

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
