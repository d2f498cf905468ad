//! Read-your-writes: a command answers with the aggregate's version; a read that names it
//! (`min_version`, or the header `X-Min-Version`) waits, bounded by `READ_WAIT_MS`, until
//! the read model reflects it, and says `X-Read-Stale: true` when it gave up.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use events::http::Problem;

/// Set when a read gave up waiting for the requested version.
pub static READ_STALE: HeaderName = HeaderName::from_static("x-read-stale");
/// The version a read reflects.
pub static READ_VERSION: HeaderName = HeaderName::from_static("x-read-version");
/// Request header: wait until the read model reflects at least this version.
pub static MIN_VERSION: HeaderName = HeaderName::from_static("x-min-version");

/// The version the caller waits for: the header wins over the query parameter.
pub fn min_version(headers: &HeaderMap, param: Option<i64>) -> Result<Option<i64>, Problem> {
    match headers.get(&MIN_VERSION) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| {
                Problem::bad_request("invalid_min_version", "X-Min-Version must be an integer.")
            }),
        None => Ok(param),
    }
}

/// Reads with `fetch` until what it returns has at least `min` as its version (`version`
/// of `None` counts as 0) or `wait` has passed; says whether it gave up.
pub async fn read_at_least<T, F, Fut>(
    wait: Duration,
    min: Option<i64>,
    version: impl Fn(&T) -> i64,
    mut fetch: F,
) -> Result<(Option<T>, bool), Problem>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        let row = fetch().await.map_err(|e| Problem::unavailable(&e))?;
        let at = row.as_ref().map_or(0, &version);
        let fresh = min.is_none_or(|min| at >= min);
        if fresh || Instant::now() >= deadline {
            return Ok((row, !fresh));
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// Adds `X-Read-Version` and, when stale, `X-Read-Stale` to an answer. (Its `ETag` is a tag
/// of its bytes, added by [`super::conditional`]: an answer can change while the version it
/// reflects does not.)
pub fn version_headers(headers: &mut HeaderMap, version: Option<i64>, stale: bool) {
    if let Some(version) = version {
        if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
            headers.insert(READ_VERSION.clone(), v);
        }
    }
    if stale {
        headers.insert(READ_STALE.clone(), HeaderValue::from_static("true"));
    }
}
