//! Prometheus text exposition of the service's counters and histograms, hand-written (a few
//! counters do not earn a metrics crate). Totals over all tenants only: no tenant label, so a
//! scrape reveals nothing of any one tenant.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the scored-priority histogram.
pub const PRIORITY_BUCKETS: [f64; 10] =
    [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    alerts_accepted: u64,
    alerts_rejected: u64,
    evidence_stored: u64,
    threats_scored: u64,
    verdicts: u64,
    reloads: u64,
    reload_failures: u64,
    priorities: Histogram,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One request done: route template (`/v1/threats/{id}`, never the raw path), method,
    /// status, seconds.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests
                .entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
            m.latency
                .entry((route.to_string(), method.to_string()))
                .or_default()
                .observe(&LATENCY_BUCKETS, seconds);
        });
    }

    /// Records of a `POST /v1/alerts` batch.
    pub fn alerts(&self, accepted: u64, rejected: u64, evidence: u64) {
        self.with(|m| {
            m.alerts_accepted += accepted;
            m.alerts_rejected += rejected;
            m.evidence_stored += evidence;
        });
    }

    /// Priorities of newly scored threats.
    pub fn scored(&self, priorities: impl IntoIterator<Item = u8>) {
        self.with(|m| {
            for p in priorities {
                m.threats_scored += 1;
                m.priorities.observe(&PRIORITY_BUCKETS, f64::from(p));
            }
        });
    }

    /// One verdict stored.
    pub fn verdict(&self) {
        self.with(|m| m.verdicts += 1);
    }

    /// One model reload (ok or failed).
    pub fn reload(&self, ok: bool) {
        self.with(|m| {
            if ok {
                m.reloads += 1;
            } else {
                m.reload_failures += 1;
            }
        });
    }

    /// The Prometheus text; `threats` is the number of threats stored now (all tenants).
    pub fn render(&self, threats: u64) -> String {
        self.with(|m| {
            let mut out = String::new();
            out.push_str("# HELP threatrank_http_requests_total HTTP requests by route template, method and status.\n# TYPE threatrank_http_requests_total counter\n");
            for ((route, method, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "threatrank_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
            out.push_str("# HELP threatrank_http_request_duration_seconds Request latency by route template and method.\n# TYPE threatrank_http_request_duration_seconds histogram\n");
            for ((route, method), h) in &m.latency {
                h.write(
                    &mut out,
                    "threatrank_http_request_duration_seconds",
                    &format!("route=\"{route}\",method=\"{method}\""),
                    &LATENCY_BUCKETS,
                );
            }
            for (name, help, v) in [
                ("threatrank_alert_records_accepted_total", "Alert records accepted by POST /v1/alerts.", m.alerts_accepted),
                ("threatrank_alert_records_rejected_total", "Alert records rejected by POST /v1/alerts.", m.alerts_rejected),
                ("threatrank_evidence_rows_stored_total", "Evidence rows stored.", m.evidence_stored),
                ("threatrank_threats_scored_total", "Candidate threats (re)scored.", m.threats_scored),
                ("threatrank_verdicts_total", "Analyst verdicts stored.", m.verdicts),
                ("threatrank_model_reloads_total", "Successful model reloads (SIGHUP).", m.reloads),
                ("threatrank_model_reload_failures_total", "Failed model reloads (the old model stays).", m.reload_failures),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP threatrank_threats_stored Candidate threats in the queues (all tenants).\n# TYPE threatrank_threats_stored gauge\nthreatrank_threats_stored {threats}"
            );
            out.push_str("# HELP threatrank_scored_priority Priority (0-100) of scored threats.\n# TYPE threatrank_scored_priority histogram\n");
            m.priorities
                .write(&mut out, "threatrank_scored_priority", "", &PRIORITY_BUCKETS);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.request("/v1/queue", "GET", 200, 0.003);
        m.request("/v1/queue", "GET", 200, 0.2);
        m.scored([95, 5]);
        let t = m.render(2);
        assert!(t.contains(
            "threatrank_http_requests_total{route=\"/v1/queue\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(t.contains("threatrank_http_request_duration_seconds_bucket{route=\"/v1/queue\",method=\"GET\",le=\"0.005\"} 1"));
        assert!(t.contains("le=\"0.25\"} 2"));
        assert!(t.contains("threatrank_scored_priority_bucket{le=\"10\"} 1"));
        assert!(t.contains("threatrank_scored_priority_count 2"));
        assert!(t.contains("threatrank_threats_stored 2"));
    }
}
