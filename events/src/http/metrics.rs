use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Prometheus metrics: HTTP request counts and latency histograms per route, plus named
/// counters and gauges that components set (relay lag, events published, …).
///
/// Hand-rolled rather than a metrics crate: the text format is small and stable, and the
/// build stays lean.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per `(method, route)`: status counts, bucket counts, sum of seconds.
    http: Mutex<BTreeMap<(String, String), RouteStats>>,
    /// Named series: `name{labels}` → (kind, help, value).
    series: Mutex<BTreeMap<String, Series>>,
}

#[derive(Debug, Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct Series {
    name: &'static str,
    labels: String,
    kind: &'static str,
    help: &'static str,
    value: f64,
}

impl Metrics {
    /// Records one served request.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let stats = http
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        *stats.by_status.entry(status).or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                stats.buckets[i] += 1;
            }
        }
        stats.count += 1;
        stats.sum += secs;
    }

    fn update(
        &self,
        kind: &'static str,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let key = format!("{name}{{{labels}}}");
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series.entry(key).or_insert(Series {
            name,
            labels,
            kind,
            help,
            value: 0.0,
        });
        f(&mut s.value);
    }

    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: f64) {
        self.update("counter", name, help, labels, |v| *v += by);
    }

    /// Sets a gauge.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.update("gauge", name, help, labels, |v| *v = value);
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let http = self.http.lock().unwrap_or_else(|p| p.into_inner());
            out.push_str("# HELP http_requests_total HTTP requests served, by route and status.\n# TYPE http_requests_total counter\n");
            for ((method, route), stats) in http.iter() {
                for (status, n) in &stats.by_status {
                    let _ = writeln!(
                        out,
                        "http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                        escape(route)
                    );
                }
            }
            out.push_str("# HELP http_request_duration_seconds Time to serve a request.\n# TYPE http_request_duration_seconds histogram\n");
            for ((method, route), stats) in http.iter() {
                let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                        stats.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nhttp_request_duration_seconds_sum{{{labels}}} {}\nhttp_request_duration_seconds_count{{{labels}}} {}",
                    stats.count, stats.sum, stats.count
                );
            }
        }
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut described = std::collections::BTreeSet::new();
        for s in series.values() {
            if described.insert(s.name) {
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    s.name, s.help, s.name, s.kind
                );
            }
            let _ = writeln!(out, "{}{{{}}} {}", s.name, s.labels, s.value);
        }
        out
    }
}

impl IntoResponse for &Metrics {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            self.render(),
        )
            .into_response()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.observe_http("GET", "/v1/tenants", 200, Duration::from_millis(3));
        m.count(
            "relay_events_published_total",
            "Events published.",
            &[],
            2.0,
        );
        m.gauge(
            "relay_lag_events",
            "Events behind.",
            &[("stream", "EVENTS")],
            5.0,
        );
        let text = m.render();
        assert!(text.contains(
            "http_requests_total{method=\"GET\",route=\"/v1/tenants\",status=\"200\"} 1"
        ));
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/tenants\",le=\"0.005\"} 1"));
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/tenants\",le=\"0.0025\"} 0"));
        assert!(text.contains("relay_events_published_total{} 2"));
        assert!(text.contains("relay_lag_events{stream=\"EVENTS\"} 5"));
    }
}
