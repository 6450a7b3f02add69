//! Reading etcd's `/metrics` (Prometheus text format): what the watch
//! phase counts etcd's sent bytes with.

/// The sum of a Prometheus counter over all its label sets, from the text
/// format; `None` when the metric is absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `foo` must not match `foo_bucket`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next() else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_over_labels_and_ignores_look_alikes() {
        let text = "# HELP x\n# TYPE x counter\n\
            etcd_network_client_grpc_sent_bytes_total 1234\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 5\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\"} 7\n\
            grpc_server_handled_total_bucket{le=\"1\"} 100\n\
            etcd_x 1e3\n";
        assert_eq!(
            metric_sum(text, "etcd_network_client_grpc_sent_bytes_total"),
            Some(1234.0)
        );
        assert_eq!(metric_sum(text, "grpc_server_handled_total"), Some(12.0));
        assert_eq!(metric_sum(text, "etcd_x"), Some(1000.0));
        assert_eq!(metric_sum(text, "nothing"), None);
    }
}
