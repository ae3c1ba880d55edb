//! The Spark port table, from the seed: the ports watched by default and the service behind
//! each. One place: the defaults, service names in findings, and remedies all read it.

/// The seed's port table: HTTPS UI/API, alternative REST API, HiveServer2/Thrift, Spark
/// Connect, the executor shuffle service, the driver UI and the Hive metastore.
pub const DEFAULT_PORTS: &str = "7337,10000,10001,4040,9083,443,8443";

/// The seed table's HTTPS ports: what arrives there is expected to be TLS.
pub fn is_https(port: u16) -> bool {
    matches!(port, 443 | 8443)
}

/// The Spark-side service behind a well-known port.
pub fn service_name(port: u16) -> Option<&'static str> {
    Some(match port {
        443 => "UI / API (HTTPS)",
        8443 => "REST API (HTTPS, alt)",
        10000 => "HiveServer2 / Thrift",
        10001 => "Spark Connect",
        4040 => "Spark driver UI",
        7337 => "Spark external shuffle service",
        9083 => "Hive metastore (Thrift)",
        _ => return None,
    })
}
