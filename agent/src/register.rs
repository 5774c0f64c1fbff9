//! Registering the gateway as `consul connect envoy -gateway=mesh -register`
//! does (reference 6.1, `command/connect/envoy/envoy.go`), and
//! deregistering it on a clean shutdown.
//!
//! The body: `Kind: mesh-gateway`, `Name` = `--service`, `ID` =
//! `--proxy-id` (default: the service name),
//! `Address`/`Port` = `--address` (port 8443 by default; without the flag,
//! no address and port 8443), `TaggedAddresses.lan`/`.wan` for each address
//! given, a TCP check `mesh-gateway listening` on the LAN address (or
//! 127.0.0.1) every 10 s with `DeregisterCriticalServiceAfter`, and
//! `Proxy.Config` asking to bind the tagged addresses when both are local
//! addresses. A LAN address that is not local is refused, as Consul does.
//!
//! "Local" is decided by binding a socket to the address (Consul compares
//! with the interface list): on Linux every 127/8 address binds, so a
//! loopback WAN address other than 127.0.0.1 counts as local here.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::blocking::{Backoff, WatchCtx};
use crate::config::Registration;
use crate::http::{encode, HttpError, Pool, Request};

/// Whether `addr` is an address of this host.
pub fn can_bind(addr: &str) -> bool {
    match addr.parse::<IpAddr>() {
        Ok(ip) => UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok(),
        Err(_) => false,
    }
}

/// The registration body.
///
/// # Errors
/// A LAN address that is not local (Consul's text).
pub fn body(r: &Registration, bindable: &dyn Fn(&str) -> bool) -> Result<Value, String> {
    let (lan_addr, lan_port) = (&r.lan.0, r.lan.1);
    let (wan_addr, wan_port) = (&r.wan.0, r.wan.1);
    let mut tagged = Map::new();
    if !lan_addr.is_empty() {
        tagged.insert("lan".into(), json!({"Address": lan_addr, "Port": lan_port}));
    }
    if !wan_addr.is_empty() {
        tagged.insert("wan".into(), json!({"Address": wan_addr, "Port": wan_port}));
    }
    let proxy = if !r.bind_addresses.is_empty() {
        let addrs: Map<String, Value> = r
            .bind_addresses
            .iter()
            .map(|(name, (a, p))| (name.clone(), json!({"Address": a, "Port": p})))
            .collect();
        Some(json!({"Config": {
            "envoy_gateway_no_default_bind": true,
            "envoy_gateway_bind_addresses": addrs,
        }}))
    } else if bindable(lan_addr) && bindable(wan_addr) {
        Some(json!({"Config": {
            "envoy_gateway_no_default_bind": true,
            "envoy_gateway_bind_tagged_addresses": true,
        }}))
    } else if !lan_addr.is_empty() && !bindable(lan_addr) {
        return Err(format!(
            "The LAN address {lan_addr:?} will not be bindable. Either set a bindable address or override the bind addresses with -bind-address"
        ));
    } else {
        None
    };
    let check_host = if lan_addr.is_empty() {
        "127.0.0.1"
    } else {
        lan_addr.as_str()
    };
    let check_target = match check_host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{check_host}]:{lan_port}"),
        _ => format!("{check_host}:{lan_port}"),
    };
    let mut svc = Map::new();
    svc.insert("Kind".into(), json!("mesh-gateway"));
    svc.insert("ID".into(), json!(r.id));
    svc.insert("Name".into(), json!(r.service));
    if lan_port != 0 {
        svc.insert("Port".into(), json!(lan_port));
    }
    if !lan_addr.is_empty() {
        svc.insert("Address".into(), json!(lan_addr));
    }
    if !tagged.is_empty() {
        svc.insert("TaggedAddresses".into(), Value::Object(tagged));
    }
    svc.insert(
        "Check".into(),
        json!({
            "Name": "mesh-gateway listening",
            "Interval": "10s",
            "TCP": check_target,
            "DeregisterCriticalServiceAfter": r.deregister_after_critical,
        }),
    );
    if r.expose_servers {
        svc.insert(
            "Meta".into(),
            json!({crate::settings::WAN_FEDERATION_META: "1"}),
        );
    }
    if let Some(p) = proxy {
        svc.insert("Proxy".into(), p);
    }
    Ok(Value::Object(svc))
}

fn tenancy(ns: Option<&str>, partition: Option<&str>) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(ns) = ns {
        q.push(("ns", ns.to_owned()));
    }
    if let Some(p) = partition {
        q.push(("partition", p.to_owned()));
    }
    q
}

/// Registers, retrying with backoff until Consul accepts (a 4xx other than
/// 429 is final: the registration itself is wrong).
///
/// # Errors
/// Consul refused the registration.
pub async fn register(
    ctx: &Arc<WatchCtx>,
    body: &Value,
    ns: Option<&str>,
    partition: Option<&str>,
) -> Result<(), HttpError> {
    let t = ctx.timing;
    let mut backoff = Backoff::new(t.retry_base, t.retry_max);
    let mut problem = None;
    loop {
        let req = Request {
            method: hyper::Method::PUT,
            query: tenancy(ns, partition),
            body: Some(body.to_string().into_bytes()),
            ..Request::get(
                "/v1/agent/service/register".into(),
                Pool::Core,
                t.request_timeout,
            )
        };
        match ctx.client.send(req).await {
            Ok(_) => {
                if let Some(p) = problem.take() {
                    ctx.problems.recover("register", p);
                }
                return Ok(());
            }
            Err(HttpError::Status { code, body }) if (400..500).contains(&code) && code != 429 => {
                return Err(HttpError::Status { code, body });
            }
            Err(e) => {
                problem = Some(ctx.problems.fail("register", problem.take(), &e));
                tokio::time::sleep(backoff.next(fastrand::f64())).await;
            }
        }
    }
}

/// Deregisters service `id` (one attempt).
///
/// # Errors
/// The request failed.
pub async fn deregister(
    ctx: &Arc<WatchCtx>,
    id: &str,
    ns: Option<&str>,
    partition: Option<&str>,
) -> Result<(), HttpError> {
    let t = ctx.timing;
    let req = Request {
        method: hyper::Method::PUT,
        query: tenancy(ns, partition),
        ..Request::get(
            format!("/v1/agent/service/deregister/{}", encode(id)),
            Pool::Core,
            t.request_timeout,
        )
    };
    ctx.client.send(req).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(lan: &str, wan: &str) -> Registration {
        Registration {
            service: "mesh-gateway".into(),
            id: "mesh-gateway".into(),
            lan: (lan.into(), 8443),
            wan: (wan.into(), 443),
            deregister_after_critical: "6h".into(),
            expose_servers: false,
            bind_addresses: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn expose_servers_and_bind_addresses_as_consul_connect_envoy() {
        let mut r = reg("10.0.0.5", "198.51.100.5");
        r.expose_servers = true;
        r.bind_addresses
            .insert("lan".into(), ("10.0.0.5".into(), 8443));
        r.bind_addresses
            .insert("public".into(), ("198.51.100.5".into(), 443));
        let b = body(&r, &|_| true).unwrap();
        assert_eq!(b["Meta"], json!({"consul-wan-federation": "1"}));
        assert_eq!(
            b["Proxy"],
            json!({"Config": {
                "envoy_gateway_no_default_bind": true,
                "envoy_gateway_bind_addresses": {
                    "lan": {"Address": "10.0.0.5", "Port": 8443},
                    "public": {"Address": "198.51.100.5", "Port": 443},
                }
            }})
        );
        let b = body(&reg("10.0.0.5", ""), &|_| true).unwrap();
        assert!(b.get("Meta").is_none());
    }

    #[test]
    fn proxy_id_is_the_id_and_the_service_the_name() {
        let r = Registration {
            id: "mesh-gateway-b".into(),
            ..reg("", "")
        };
        let b = body(&r, &|_: &str| false).unwrap();
        assert_eq!(
            (&b["ID"], &b["Name"]),
            (&json!("mesh-gateway-b"), &json!("mesh-gateway"))
        );
    }

    #[test]
    fn body_matches_consul_connect_envoy() {
        let local = |a: &str| a == "10.0.0.5" || a == "198.18.0.5";
        let b = body(&reg("10.0.0.5", "198.18.0.5"), &local).unwrap();
        assert_eq!(
            b,
            json!({
                "Kind": "mesh-gateway",
                "ID": "mesh-gateway",
                "Name": "mesh-gateway",
                "Address": "10.0.0.5",
                "Port": 8443,
                "TaggedAddresses": {
                    "lan": {"Address": "10.0.0.5", "Port": 8443},
                    "wan": {"Address": "198.18.0.5", "Port": 443}
                },
                "Check": {
                    "Name": "mesh-gateway listening",
                    "TCP": "10.0.0.5:8443",
                    "Interval": "10s",
                    "DeregisterCriticalServiceAfter": "6h"
                },
                "Proxy": {"Config": {
                    "envoy_gateway_no_default_bind": true,
                    "envoy_gateway_bind_tagged_addresses": true
                }}
            })
        );
        // WAN not local: no proxy config.
        let b = body(&reg("10.0.0.5", "203.0.113.9"), &local).unwrap();
        assert!(b.get("Proxy").is_none());
        // No addresses at all: port 8443, check on 127.0.0.1.
        let b = body(&reg("", ""), &local).unwrap();
        assert_eq!(b["Check"]["TCP"], "127.0.0.1:8443");
        assert!(b.get("Address").is_none() && b.get("TaggedAddresses").is_none());
        // A LAN address that is not local is refused.
        let e = body(&reg("203.0.113.1", ""), &local).unwrap_err();
        assert!(e.contains("will not be bindable"));
    }

    #[test]
    fn loopback_binds() {
        assert!(can_bind("127.0.0.1"));
        assert!(!can_bind("not-an-ip"));
        assert!(!can_bind(""));
    }
}
