//! Limits per client: who the client is behind proxies, and hourly counters.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::AppState;

/// Who the client is, for per-client limits: the socket's peer or, behind `hops` trusted
/// proxies, the address the outermost of them saw ([`forwarded_client`]); an IPv6 address
/// counts as its /64, the block one subscriber is usually given, so rotating addresses
/// inside it is not a way round a limit.
pub(crate) fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> String {
    client_ip_behind(state.proxy_hops, peer, headers)
}

/// [`client_ip`] with `hops` trusted proxies in front.
pub(crate) fn client_ip_behind(hops: usize, peer: SocketAddr, headers: &HeaderMap) -> String {
    let lines: Option<Vec<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    // An unreadable line shifts what "n-th from the right" means: ignore the header then.
    let forwarded = lines.and_then(|lines| forwarded_client(&lines.join(","), hops));
    limit_key(forwarded.unwrap_or_else(|| peer.ip()))
}

/// The client in an `X-Forwarded-For` list written through `hops` trusted proxies: each
/// appends the address it received the request from, so the n-th address from the right is
/// the one the outermost trusted proxy saw; everything to its left came from the client and
/// may be anything. An address may carry a port (`203.0.113.7:5678`, `[2001:db8::1]:443`),
/// as some proxies write it. `None` when no proxy is trusted or the list is shorter or
/// unparsable there (the socket's peer is used then). This trusts that clients reach
/// command-api only through those proxies.
fn forwarded_client(header: &str, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return None;
    }
    let hop = header.rsplit(',').nth(hops - 1)?.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The key a client's hits are counted under: an IPv4 address whole, an IPv6 address by its
/// /64 prefix.
fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Counts a hit in an hourly window; `Some(seconds)` when over `limit`.
pub(crate) async fn over_limit(
    state: &AppState,
    bucket: &str,
    limit: i64,
) -> Result<Option<i64>, sqlx::Error> {
    spend(state, bucket, Window::Hour, 1, limit).await
}

/// The fixed window a budget is counted in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Window {
    /// The current clock hour.
    Hour,
    /// The current day (UTC).
    Day,
}

/// Adds `amount` to `bucket`'s count in the current `window` (0 only reads it), and says
/// how many seconds are left of the window when the count is then over `limit`.
pub(crate) async fn spend(
    state: &AppState,
    bucket: &str,
    window: Window,
    amount: i32,
    limit: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let unit = match window {
        Window::Hour => "hour",
        Window::Day => "day",
    };
    let (hits, left): (i32, i64) = sqlx::query_as(
        "INSERT INTO rate_limits (bucket, window_start, hits)
         VALUES ($1, date_trunc($3, now()), $2)
         ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limits.hits + $2
         RETURNING hits,
                   ceil(extract(epoch FROM date_trunc($3, now())
                                           + ('1 ' || $3)::interval - now()))::bigint",
    )
    .bind(bucket)
    .bind(amount)
    .bind(unit)
    .fetch_one(&state.pool)
    .await?;
    Ok((i64::from(hits) > limit).then_some(left.max(1)))
}

#[cfg(test)]
mod tests {
    use super::{forwarded_client, limit_key};

    fn client(header: &str, hops: usize) -> Option<String> {
        forwarded_client(header, hops).map(|ip| ip.to_string())
    }

    #[test]
    fn the_client_is_the_address_the_outermost_trusted_proxy_saw() {
        // The client forged the first entry; the one proxy appended what it saw.
        assert_eq!(
            client("6.6.6.6, 203.0.113.7", 1).as_deref(),
            Some("203.0.113.7")
        );
        // Two proxies: the inner one appended the outer proxy's address.
        assert_eq!(
            client("6.6.6.6, 203.0.113.7, 10.0.0.2", 2).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(client("2001:db8::1", 1).as_deref(), Some("2001:db8::1"));
        // Proxies that write the port too.
        assert_eq!(
            client("6.6.6.6, 203.0.113.7:5678", 1).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            client("[2001:db8::1]:443", 1).as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn without_trusted_proxies_or_a_usable_hop_the_header_is_ignored() {
        assert_eq!(client("203.0.113.7", 0), None);
        assert_eq!(client("203.0.113.7", 2), None, "shorter than the hops");
        assert_eq!(client("6.6.6.6, not-an-ip", 1), None);
        assert_eq!(client("", 1), None);
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = limit_key("2001:db8:1:2:bbbb:cccc:dddd:eeee".parse().expect("ip"));
        assert_eq!(a, b, "one subscriber's block");
        assert_ne!(
            a,
            limit_key("2001:db8:1:3::1".parse().expect("ip")),
            "the next /64 is someone else"
        );
        assert_eq!(limit_key("203.0.113.7".parse().expect("ip")), "203.0.113.7");
        assert_eq!(
            limit_key("::ffff:203.0.113.7".parse().expect("ip")),
            "203.0.113.7"
        );
    }
}
