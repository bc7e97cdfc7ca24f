//! Runtime settings shared by every service, flattened into each service's clap
//! config so `--help` lists them with their environment variables.

use std::time::Duration;

use clap::Args;

/// Settings every service binary accepts.
#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Version reported in `x-served-by`, metrics and traces (Kubernetes: the `version` label).
    #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
    pub service_version: String,

    /// Instance name reported in `x-served-by` (Kubernetes: the pod name); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// After SIGTERM, how long to keep serving while reporting NOT_SERVING so load
    /// balancers stop sending traffic (e.g. 5s in Kubernetes).
    #[arg(long, env = "DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Deadline for in-flight requests and streams to finish once draining starts.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Settings of a service that serves gRPC (the gateway serves none).
#[derive(Args, Clone, Debug)]
pub struct GrpcArgs {
    /// Serve gRPC server reflection (what grpcurl uses to list and call the
    /// API). It describes every method to whoever can reach the port: the chart
    /// turns it off unless asked.
    #[arg(long, env = "GRPC_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,
}

impl Default for GrpcArgs {
    fn default() -> Self {
        Self {
            grpc_reflection: true,
        }
    }
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            service_version: "v1".into(),
            pod_name: None,
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

impl RuntimeArgs {
    /// This process's identity for `service`.
    pub fn identity(&self, service: &str) -> telemetry::Identity {
        telemetry::Identity {
            service: service.to_owned(),
            version: self.service_version.clone(),
            pod: self.pod_name.clone().unwrap_or_else(hostname),
        }
    }
}

/// The host name, or "local" when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// Parses `500ms`, `5s`, `2m`, `3h`, `14d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s or 2m"))?;
    let seconds = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(format!(
            "`{text}` is not a duration like 500ms, 5s, 2m, 3h or 14d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10_800)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(1_209_600)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
