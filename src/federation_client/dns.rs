//! DNS look-ups for server discovery: SRV records and host addresses,
//! behind a trait so that the resolver can be tested with a fake.

use std::net::IpAddr;

use async_trait::async_trait;
use hickory_resolver::{TokioResolver, proto::rr::RData};

/// One SRV target: a host to resolve with AAAA/A records, and its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("DNS lookup of {name}: {message}")]
pub struct DnsError {
    pub name: String,
    pub message: String,
}

impl DnsError {
    pub fn new(name: &str, message: impl ToString) -> Self {
        Self {
            name: name.to_owned(),
            message: message.to_string(),
        }
    }
}

/// The DNS queries server discovery needs.
#[async_trait]
pub trait Dns: Send + Sync {
    /// The targets of the SRV records of `name` (such as
    /// `_matrix-fed._tcp.example.org`) in the order to try them (RFC 2782:
    /// by priority, weighted at random within a priority). Empty when there
    /// is no such record.
    async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, DnsError>;

    /// The addresses of `host`, following CNAMEs, from AAAA and A records.
    async fn ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

/// DNS with the system's configuration: hickory reading /etc/resolv.conf,
/// and the operating system's resolver (so /etc/hosts, `localhost`) for
/// addresses hickory does not find.
pub struct SystemDns {
    hickory: Option<TokioResolver>,
}

impl SystemDns {
    pub fn new() -> Self {
        let hickory = TokioResolver::builder_tokio()
            .and_then(|builder| builder.build())
            .inspect_err(|e| tracing::warn!("no DNS resolver from the system configuration, SRV records unused: {e}"))
            .ok();
        Self { hickory }
    }
}

impl Default for SystemDns {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Dns for SystemDns {
    async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, DnsError> {
        let Some(hickory) = &self.hickory else {
            return Ok(Vec::new());
        };
        let lookup = match hickory.srv_lookup(name).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(DnsError::new(name, e)),
        };
        let records = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                // A target of "." means the service is not offered there.
                RData::SRV(srv) if !srv.target.is_root() => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    target: SrvTarget {
                        host: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                        port: srv.port,
                    },
                }),
                _ => None,
            })
            .collect();
        Ok(order_srv(records, |total| rand::random_range(0..=total)))
    }

    async fn ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(hickory) = &self.hickory {
            match hickory.lookup_ip(host).await {
                Ok(lookup) if lookup.iter().next().is_some() => return Ok(lookup.iter().collect()),
                Ok(_) => {}
                Err(e) => tracing::debug!(host, "DNS lookup failed, trying the system resolver: {e}"),
            }
        }
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| DnsError::new(host, e))?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for addr in addrs {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
            }
        }
        Ok(ips)
    }
}

/// An SRV record, before ordering.
#[derive(Clone, Debug)]
pub(crate) struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub target: SrvTarget,
}

/// Orders SRV records as RFC 2782 says: lowest priority first; within a
/// priority, repeatedly pick a record at random with a probability
/// proportional to its weight. `random(total)` returns a number in
/// `0..=total`.
pub(crate) fn order_srv(mut records: Vec<SrvRecord>, mut random: impl FnMut(u32) -> u32) -> Vec<SrvTarget> {
    // Zero-weight records first within a priority, as the RFC asks.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let group_len = records.iter().take_while(|r| r.priority == priority).count();
        let mut group: Vec<SrvRecord> = records.drain(..group_len).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(group.len() - 1);
            ordered.push(group.remove(index).target);
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u16, weight: u16, host: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            target: SrvTarget {
                host: host.to_owned(),
                port: 8448,
            },
        }
    }

    fn hosts(targets: Vec<SrvTarget>) -> Vec<String> {
        targets.into_iter().map(|t| t.host).collect()
    }

    #[test]
    fn srv_order_is_by_priority_then_weight() {
        let records = vec![
            record(20, 0, "c"),
            record(10, 1, "b1"),
            record(10, 3, "b3"),
            record(5, 0, "a"),
        ];
        // Always the highest number: the last record of the running sum.
        assert_eq!(hosts(order_srv(records.clone(), |total| total)), ["a", "b3", "b1", "c"]);
        // Always zero: the first record with a running sum >= 0.
        assert_eq!(hosts(order_srv(records, |_| 0)), ["a", "b1", "b3", "c"]);
    }

    #[test]
    fn srv_zero_weights_come_first_in_a_priority() {
        let records = vec![record(1, 5, "heavy"), record(1, 0, "zero")];
        assert_eq!(hosts(order_srv(records, |_| 0)), ["zero", "heavy"]);
    }

    #[tokio::test]
    async fn system_dns_resolves_localhost() {
        let ips = SystemDns::new().ip("localhost").await.expect("localhost resolves");
        assert!(ips.iter().all(IpAddr::is_loopback) && !ips.is_empty(), "{ips:?}");
    }
}
