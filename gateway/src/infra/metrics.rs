//! Prometheus metrics, written by hand: request counts and latency histograms by route,
//! method and status; pool gauges.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Pool and cache figures sampled at scrape time.
pub struct Gauges {
    pub pool_max: usize,
    pub pool_size: usize,
    pub pool_available: usize,
    pub pool_waiting: usize,
    pub schema_loaded: bool,
    pub functions: usize,
    pub views: usize,
    /// Group commit: transactions run for groups, and the calls they answered.
    pub group_commits: u64,
    pub grouped_calls: u64,
}

impl Metrics {
    pub fn observe(&self, route: String, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let Ok(mut m) = self.series.lock() else {
            return;
        };
        let s = m.entry((route, method.to_string(), status)).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let series = self.series.lock().map(|m| m.clone()).unwrap_or_default();
        out.push_str(
            "# HELP mec_gateway_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE mec_gateway_http_requests_total counter\n");
        for ((route, method, status), s) in &series {
            let _ = writeln!(
                out,
                "mec_gateway_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {}",
                escape(route),
                escape(method),
                status,
                s.count
            );
        }
        out.push_str("# HELP mec_gateway_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE mec_gateway_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in &series {
            let labels = format!(
                "route=\"{}\",method=\"{}\",status=\"{}\"",
                escape(route),
                escape(method),
                status
            );
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mec_gateway_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "mec_gateway_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "mec_gateway_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "mec_gateway_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let gauges = [
            (
                "mec_gateway_db_pool_max_connections",
                "Pool maximum size.",
                g.pool_max,
            ),
            (
                "mec_gateway_db_pool_connections",
                "Connections currently open.",
                g.pool_size,
            ),
            (
                "mec_gateway_db_pool_available",
                "Idle connections in the pool.",
                g.pool_available,
            ),
            (
                "mec_gateway_db_pool_waiting",
                "Requests waiting for a connection.",
                g.pool_waiting,
            ),
            (
                "mec_gateway_schema_cache_loaded",
                "1 once the schema cache is loaded.",
                usize::from(g.schema_loaded),
            ),
            (
                "mec_gateway_schema_functions",
                "Functions in the schema cache.",
                g.functions,
            ),
            (
                "mec_gateway_schema_views",
                "Views in the schema cache.",
                g.views,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "mec_gateway_group_commits_total",
                "Transactions run for groups of meter_consumption calls.",
                g.group_commits,
            ),
            (
                "mec_gateway_grouped_calls_total",
                "meter_consumption calls answered from a group's transaction.",
                g.grouped_calls,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("/api/{view}".into(), "GET", 200, Duration::from_millis(3));
        m.observe("/api/{view}".into(), "GET", 200, Duration::from_millis(300));
        let text = m.render(&Gauges {
            pool_max: 4,
            pool_size: 1,
            pool_available: 1,
            pool_waiting: 0,
            schema_loaded: true,
            functions: 2,
            views: 1,
            group_commits: 3,
            grouped_calls: 40,
        });
        assert!(text.contains(
            "mec_gateway_http_requests_total{route=\"/api/{view}\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.5\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("mec_gateway_grouped_calls_total 40"));
        assert!(text.contains("mec_gateway_db_pool_max_connections 4"));
    }
}
