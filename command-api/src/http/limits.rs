//! Limits per client: who the client is behind proxies, and hourly counters.

use std::net::SocketAddr;

use axum::http::HeaderMap;

use crate::AppState;

/// The client's IP: the socket's peer, or, behind `hops` trusted proxies, the address the
/// outermost of them saw ([`forwarded_client`]).
pub(crate) fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> String {
    let header = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    forwarded_client(&header, state.proxy_hops).unwrap_or_else(|| peer.ip().to_string())
}

/// The client in an `X-Forwarded-For` list written through `hops` trusted proxies: each
/// appends the address it received the request from, so the n-th address from the right is
/// the one the outermost trusted proxy saw; everything to its left came from the client and
/// may be anything. `None` when no proxy is trusted or the list is shorter or unparsable
/// there (the socket's peer is used then).
fn forwarded_client(header: &str, hops: usize) -> Option<String> {
    if hops == 0 {
        return None;
    }
    let hop = header.rsplit(',').nth(hops - 1)?.trim();
    hop.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::forwarded_client;

    #[test]
    fn the_client_is_the_address_the_outermost_trusted_proxy_saw() {
        // The client forged the first entry; the one proxy appended what it saw.
        assert_eq!(
            forwarded_client("6.6.6.6, 203.0.113.7", 1).as_deref(),
            Some("203.0.113.7")
        );
        // Two proxies: the inner one appended the outer proxy's address.
        assert_eq!(
            forwarded_client("6.6.6.6, 203.0.113.7, 10.0.0.2", 2).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            forwarded_client("2001:db8::1", 1).as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn without_trusted_proxies_or_a_usable_hop_the_header_is_ignored() {
        assert_eq!(forwarded_client("203.0.113.7", 0), None);
        assert_eq!(
            forwarded_client("203.0.113.7", 2),
            None,
            "shorter than the hops"
        );
        assert_eq!(forwarded_client("6.6.6.6, not-an-ip", 1), None);
        assert_eq!(forwarded_client("", 1), None);
    }
}

/// Counts a hit in an hourly window; `Some(seconds)` when over `limit`.
pub(crate) async fn over_limit(
    state: &AppState,
    bucket: &str,
    limit: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let (hits, left): (i32, i64) = sqlx::query_as(
        "INSERT INTO rate_limits (bucket, window_start, hits) VALUES ($1, date_trunc('hour', now()), 1)
         ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limits.hits + 1
         RETURNING hits, ceil(extract(epoch FROM date_trunc('hour', now()) + interval '1 hour' - now()))::bigint",
    )
    .bind(bucket)
    .fetch_one(&state.pool)
    .await?;
    Ok((i64::from(hits) > limit).then_some(left.max(1)))
}
