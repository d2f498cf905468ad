//! The report: every figure of a run, the targets, a table for people and JSON for the record.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::Summary;
use crate::workloads::{Baseline, ChatRebuild, LongThread, Queries, Rebuild, WriterCost};

/// Everything one run measured; absent parts were not run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// When, where and how the run was made.
    pub run: RunInfo,
    /// The hot command by C closed-loop clients.
    pub commands_full_speed: Option<Summary>,
    /// The hot command at the fixed rate.
    pub commands_at_rate: Option<Summary>,
    /// The hot command offered at twice the closed-loop maximum, open loop.
    pub overload: Option<Overload>,
    /// From a command's 2xx to the change being visible through the query API, at the rate.
    pub lag: Option<Summary>,
    /// The dashboard reads.
    pub queries: Option<Queries>,
    /// `projector rebuild` over the seeded store.
    pub rebuild: Option<Rebuild>,
    /// `projector rebuild chat`: the cost of opening sealed texts.
    pub chat_rebuild: Option<ChatRebuild>,
    /// One thread through a long life (snapshot size, sends early and late, a cold load).
    pub long_thread: Option<LongThread>,
    /// pgbench's durable single-row appends on the same server.
    pub baseline: Option<Baseline>,
    /// Full-speed commands/s as a share of the baseline's inserts/s.
    pub baseline_ratio: Option<f64>,
    /// What announcing event writers and the relay's horizon statement cost.
    pub writer_cost: Option<WriterCost>,
    /// The relay's reads of the store (one horizon statement each) per command at full speed.
    pub relay_reads_per_command: Option<f64>,
    /// The commit horizon's cost per command: the announcement plus the relay's horizon
    /// statements spread over the commands, µs of PostgreSQL time.
    pub horizon_cost_per_command_us: Option<f64>,
    /// Resident memory of each service at the end of the load, MiB.
    pub rss_mib: BTreeMap<String, f64>,
    /// Aggregate snapshots command-api wrote during each measured command workload (the
    /// hot threads cross snapshot boundaries while measured).
    pub snapshots_written: BTreeMap<String, f64>,
    /// Each target and whether this run met it.
    pub targets: Vec<Target>,
    /// The workloads that failed, and why; the figures of the others stand.
    pub failures: Vec<Failure>,
}

/// A workload that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Which.
    pub workload: String,
    /// Why, as the error said.
    pub error: String,
}

/// The hot command offered at twice what the closed loop reached.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Overload {
    /// The closed-loop maximum it was offered twice of, commands/s.
    pub closed_loop_per_sec: f64,
    /// Commands offered per second.
    pub offered_per_sec: f64,
    /// What got through (`per_sec`), the latency of the admitted commands, and the refused
    /// or failed ones (`failed`).
    pub admitted: Summary,
}

/// The conditions of a run.
#[derive(Debug, Default, Serialize)]
pub struct RunInfo {
    /// RFC 3339 time the run started.
    pub started_at: String,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// Concurrent clients (C).
    pub clients: usize,
    /// Seconds each workload ran.
    pub seconds_per_workload: u64,
    /// The fixed command rate, per second.
    pub rate: f64,
    /// Where the services' binaries came from.
    pub binaries: String,
}

/// One target of the benchmark issue.
#[derive(Debug, Serialize)]
pub struct Target {
    /// What is measured.
    pub what: &'static str,
    /// The bound, in words.
    pub target: &'static str,
    /// The measured figure.
    pub measured: f64,
    /// Whether the run met it.
    pub met: bool,
}

impl Report {
    /// Fills `targets` from the figures present.
    pub fn judge(&mut self) {
        let mut t = Vec::new();
        let mut push = |what, target, measured: f64, met: bool| {
            t.push(Target {
                what,
                target,
                measured: (measured * 100.0).round() / 100.0,
                met,
            })
        };
        if let Some(c) = &self.commands_full_speed {
            push(
                "commands/s, full speed",
                ">= 3000",
                c.per_sec,
                c.per_sec >= 3000.0,
            );
        }
        if let Some(r) = self.baseline_ratio {
            push(
                "commands/s ÷ baseline inserts/s, %",
                ">= 60",
                r * 100.0,
                r >= 0.60,
            );
        }
        if let Some(c) = &self.commands_at_rate {
            push(
                "command p99 at the rate, ms",
                "<= 25",
                c.p99_ms,
                c.p99_ms <= 25.0,
            );
        }
        if let Some(o) = &self.overload {
            let kept = o.admitted.per_sec / o.closed_loop_per_sec.max(1e-9);
            push(
                "overload: throughput ÷ closed-loop max, %",
                ">= 90",
                kept * 100.0,
                kept >= 0.90,
            );
            push(
                "overload: admitted p99, ms",
                "<= 100",
                o.admitted.p99_ms,
                o.admitted.p99_ms <= 100.0,
            );
        }
        if let Some(l) = &self.lag {
            push("lag p50, ms", "<= 15", l.p50_ms, l.p50_ms <= 15.0);
            push("lag p99, ms", "<= 100", l.p99_ms, l.p99_ms <= 100.0);
        }
        if let Some(q) = &self.queries {
            for (what_rps, what_p99, s) in [
                ("list page rps", "list page p99, ms", &q.list),
                ("detail rps", "detail p99, ms", &q.detail),
            ] {
                push(what_rps, ">= 8000", s.per_sec, s.per_sec >= 8000.0);
                push(what_p99, "<= 20", s.p99_ms, s.p99_ms <= 20.0);
            }
        }
        if let Some(r) = &self.rebuild {
            push(
                "rebuild events/s",
                ">= 100000",
                r.per_sec,
                r.per_sec >= 100_000.0,
            );
        }
        if self.commands_full_speed.is_some() {
            // The hot threads are seeded short of a snapshot boundary, so the measured
            // commands must write snapshots: a run that writes none measured an easier path.
            let written: f64 = self.snapshots_written.values().sum();
            push(
                "snapshots written while measured",
                ">= 1",
                written,
                written >= 1.0,
            );
        }
        for (service, mib) in &self.rss_mib {
            let what = match service.as_str() {
                "command-api" => "command-api RSS, MiB",
                "projector" => "projector RSS, MiB",
                _ => "query-api RSS, MiB",
            };
            push(what, "<= 150", *mib, *mib <= 150.0);
        }
        self.targets = t;
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, s: &Summary| {
            out.push_str(&format!(
                "{name:<28} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}\n",
                s.per_sec, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms, s.failed
            ));
        };
        out.push_str(&format!(
            "{:<28} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
            "workload", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms", "failed"
        ));
        if let Some(s) = &self.commands_full_speed {
            line(
                &mut out,
                &format!("commands ({} clients)", self.run.clients),
                s,
            );
        }
        if let Some(s) = &self.commands_at_rate {
            line(&mut out, &format!("commands at {}/s", self.run.rate), s);
        }
        if let Some(o) = &self.overload {
            line(
                &mut out,
                &format!("overload, {:.0}/s offered", o.offered_per_sec),
                &o.admitted,
            );
        }
        if let Some(s) = &self.lag {
            line(&mut out, "lag (2xx → visible)", s);
        }
        if let Some(q) = &self.queries {
            line(&mut out, "inbox page (50 rows, cursor)", &q.list);
            line(&mut out, "thread detail", &q.detail);
        }
        if let Some(l) = &self.long_thread {
            line(&mut out, "long thread: first 500", &l.first);
            line(
                &mut out,
                &format!("long thread: last 500 of {}", l.messages),
                &l.last,
            );
            line(
                &mut out,
                "long thread: warm, restarted",
                &l.warm_after_restart,
            );
            out.push_str(&format!(
                "{:<28} {:>10.2}   (ms: snapshot at {} of {} bytes, then events)\n",
                "long thread: cold send", l.cold_send_ms, l.snapshot_sequence, l.snapshot_bytes
            ));
        }
        if let Some(r) = &self.rebuild {
            out.push_str(&format!(
                "{:<28} {:>10.0}   ({} events in {:.1} s)\n",
                "rebuild (events)", r.per_sec, r.events, r.seconds
            ));
        }
        if let Some(c) = &self.chat_rebuild {
            // The sealed set, added between two clear ones, against their mean time.
            let clear =
                2.0 / (1.0 / c.plain_per_sec.max(1e-9) + 1.0 / c.plain_after_per_sec.max(1e-9));
            out.push_str(&format!(
                "{:<28} {:>10.0}   ({} thread events, texts in clear; {:.0} then {:.0})\n",
                "chat rebuild, clear",
                clear,
                c.added_events,
                c.plain_per_sec,
                c.plain_after_per_sec
            ));
            out.push_str(&format!(
                "{:<28} {:>10.0}   ({} thread events, texts sealed: {:.0}% of clear)\n",
                "chat rebuild, sealed",
                c.sealed_per_sec,
                c.added_events,
                100.0 * c.sealed_per_sec / clear.max(1e-9)
            ));
        }
        if let Some(b) = &self.baseline {
            out.push_str(&format!(
                "{:<28} {:>10.0}   (pgbench, {} clients)\n",
                "baseline inserts", b.inserts_per_sec, b.clients
            ));
        }
        if let Some(r) = self.baseline_ratio {
            out.push_str(&format!(
                "{:<28} {:>9.1}%\n",
                "commands ÷ baseline",
                r * 100.0
            ));
        }
        if let Some(c) = &self.writer_cost {
            out.push_str(&format!(
                "{:<28} {:>10.1}   (µs: append {:.1} → {:.1}, 1 client, no flush)\n",
                "writer announcement", c.announce_us, c.append_us, c.announced_append_us
            ));
            out.push_str(&format!(
                "{:<28} {:>10.0}   (pgbench, {} clients, announcing)\n",
                "announced inserts",
                c.announced_inserts_per_sec,
                self.baseline.map_or(0, |b| b.clients)
            ));
            out.push_str(&format!(
                "{:<28} {:>10.1}   (µs; cluster-wide xmin {:.1} µs)\n",
                "horizon statement", c.horizon_us, c.cluster_horizon_us
            ));
        }
        if let Some(r) = self.relay_reads_per_command {
            out.push_str(&format!("{:<28} {:>10.3}\n", "relay reads per command", r));
        }
        if let Some(us) = self.horizon_cost_per_command_us {
            out.push_str(&format!(
                "{:<28} {:>10.1}   (µs: announcement + horizon × reads per command)\n",
                "horizon cost per command", us
            ));
        }
        for (workload, n) in &self.snapshots_written {
            out.push_str(&format!(
                "{:<28} {:>10.0}\n",
                format!("snapshots written ({workload})"),
                n
            ));
        }
        for (service, mib) in &self.rss_mib {
            out.push_str(&format!(
                "{:<28} {:>6.1} MiB\n",
                format!("RSS {service}"),
                mib
            ));
        }
        if !self.failures.is_empty() {
            out.push_str("\nfailed workloads (the figures above stand)\n");
            for f in &self.failures {
                out.push_str(&format!("{:<28} {}\n", f.workload, f.error));
            }
        }
        if !self.targets.is_empty() {
            out.push_str("\ntarget                                    bound     measured  met\n");
            for t in &self.targets {
                out.push_str(&format!(
                    "{:<40} {:>8} {:>12.2}  {}\n",
                    t.what,
                    t.target,
                    t.measured,
                    if t.met { "yes" } else { "NO" }
                ));
            }
        }
        out
    }
}

/// This run's targets beside a previous run's (its JSON report, as written to `--out`): each
/// figure both measured, before and now, and the change. Empty when the previous report has
/// no targets to compare with.
pub fn compare(report: &Report, previous: &serde_json::Value) -> String {
    let before: BTreeMap<&str, f64> = previous["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["what"].as_str()?, t["measured"].as_f64()?)))
        .collect();
    let mut out = String::new();
    for t in &report.targets {
        let Some(was) = before.get(t.what) else {
            continue;
        };
        let change = if *was == 0.0 {
            String::from("—")
        } else {
            format!("{:+.1}%", (t.measured - was) / was.abs() * 100.0)
        };
        out.push_str(&format!(
            "{:<40} {:>12.2} {:>12.2} {:>9}\n",
            t.what, was, t.measured, change
        ));
    }
    if out.is_empty() {
        return out;
    }
    let when = previous["run"]["started_at"]
        .as_str()
        .unwrap_or("an earlier run");
    format!(
        "\ncompared with the previous run ({when})\n{:<40} {:>12} {:>12} {:>9}\n{out}",
        "target", "before", "now", "change"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_from_the_figures_present() {
        let mut report = Report {
            commands_full_speed: Some(Summary {
                per_sec: 3500.0,
                ..Summary::default()
            }),
            baseline_ratio: Some(0.25),
            ..Report::default()
        };
        report.rss_mib.insert("projector".into(), 151.0);
        report
            .snapshots_written
            .insert("commands full speed".into(), 0.0);
        report.judge();
        let met: Vec<(&str, bool)> = report.targets.iter().map(|t| (t.what, t.met)).collect();
        assert_eq!(
            met,
            vec![
                ("commands/s, full speed", true),
                ("commands/s ÷ baseline inserts/s, %", false),
                ("snapshots written while measured", false),
                ("projector RSS, MiB", false),
            ]
        );
        assert!(report.table().contains("NO"));
    }

    #[test]
    fn a_run_is_compared_with_the_previous_one_figure_by_figure() {
        let mut report = Report {
            commands_full_speed: Some(Summary {
                per_sec: 3300.0,
                ..Summary::default()
            }),
            ..Report::default()
        };
        report.judge();
        let previous = serde_json::json!({
            "run": {"started_at": "2026-12-06T10:00:00Z"},
            "targets": [
                {"what": "commands/s, full speed", "measured": 3000.0},
                {"what": "rebuild events/s", "measured": 50000.0}
            ]
        });
        let compared = compare(&report, &previous);
        assert!(compared.contains("2026-12-06T10:00:00Z"), "{compared}");
        assert!(compared.contains("+10.0%"), "{compared}");
        assert!(
            !compared.contains("rebuild"),
            "only figures both runs have: {compared}"
        );
        assert_eq!(compare(&report, &serde_json::json!({})), "");
    }

    #[test]
    fn overload_is_judged_against_the_closed_loop_maximum() {
        let mut report = Report {
            overload: Some(Overload {
                closed_loop_per_sec: 1000.0,
                offered_per_sec: 2000.0,
                admitted: Summary {
                    per_sec: 850.0,
                    p99_ms: 40.0,
                    ..Summary::default()
                },
            }),
            ..Report::default()
        };
        report.failures.push(Failure {
            workload: "queries".into(),
            error: "connection refused".into(),
        });
        report.judge();
        let met: Vec<(&str, bool)> = report.targets.iter().map(|t| (t.what, t.met)).collect();
        assert_eq!(
            met,
            vec![
                ("overload: throughput ÷ closed-loop max, %", false),
                ("overload: admitted p99, ms", true),
            ]
        );
        let table = report.table();
        assert!(
            table.contains("queries") && table.contains("connection refused"),
            "{table}"
        );
    }
}
