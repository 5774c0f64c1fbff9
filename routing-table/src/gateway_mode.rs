//! Which mesh gateway mode applies to an upstream, as Consul decides it:
//! the upstream's own setting, then the service instance's
//! `proxy.mesh_gateway`, then the service's `service-defaults`, then the
//! global `proxy-defaults`; `none` when nothing sets it (reference section 7;
//! the guide "Enabling Service-to-service Traffic Across WAN Federated
//! Datacenters"). An empty mode at any level means "not set here".

use std::fmt;

/// How a sidecar reaches an upstream in another datacenter or partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshGatewayMode {
    /// Dial the destination instances directly.
    None,
    /// Dial a mesh gateway in the sidecar's own datacenter.
    Local,
    /// Dial a mesh gateway in the destination datacenter.
    Remote,
}

impl MeshGatewayMode {
    /// Parses Consul's spelling (`none`, `local`, `remote`, any case);
    /// `Ok(None)` for an empty string (not set at this level).
    ///
    /// # Errors
    /// The text, when it is none of those.
    pub fn parse(text: &str) -> Result<Option<MeshGatewayMode>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "none" => Ok(Some(MeshGatewayMode::None)),
            "local" => Ok(Some(MeshGatewayMode::Local)),
            "remote" => Ok(Some(MeshGatewayMode::Remote)),
            _ => Err(text.to_string()),
        }
    }
}

impl fmt::Display for MeshGatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MeshGatewayMode::None => "none",
            MeshGatewayMode::Local => "local",
            MeshGatewayMode::Remote => "remote",
        })
    }
}

/// Where the mode in force was set, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModeSource {
    /// The upstream's own `mesh_gateway`.
    Upstream,
    /// The service instance's `proxy.mesh_gateway`.
    ServiceInstance,
    /// The service's `service-defaults` config entry.
    ServiceDefaults,
    /// The `proxy-defaults` config entry.
    ProxyDefaults,
    /// Nothing set it: Consul's default.
    Default,
}

impl fmt::Display for ModeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModeSource::Upstream => "the upstream definition",
            ModeSource::ServiceInstance => "the service instance (proxy.mesh_gateway)",
            ModeSource::ServiceDefaults => "the service-defaults config entry",
            ModeSource::ProxyDefaults => "the proxy-defaults config entry",
            ModeSource::Default => "Consul's default",
        })
    }
}

/// The mode set at each level, `None` where a level does not set one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeSettings {
    /// The upstream's own setting.
    pub upstream: Option<MeshGatewayMode>,
    /// The service instance's `proxy.mesh_gateway`.
    pub service_instance: Option<MeshGatewayMode>,
    /// `service-defaults` for the service.
    pub service_defaults: Option<MeshGatewayMode>,
    /// `proxy-defaults`.
    pub proxy_defaults: Option<MeshGatewayMode>,
}

impl ModeSettings {
    /// The mode in force and where it was set.
    pub fn resolve(&self) -> (MeshGatewayMode, ModeSource) {
        [
            (self.upstream, ModeSource::Upstream),
            (self.service_instance, ModeSource::ServiceInstance),
            (self.service_defaults, ModeSource::ServiceDefaults),
            (self.proxy_defaults, ModeSource::ProxyDefaults),
        ]
        .into_iter()
        .find_map(|(mode, source)| mode.map(|m| (m, source)))
        .unwrap_or((MeshGatewayMode::None, ModeSource::Default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MeshGatewayMode::*;

    #[test]
    fn each_level_wins_over_the_ones_below() {
        let all = ModeSettings {
            upstream: Some(Remote),
            service_instance: Some(Local),
            service_defaults: Some(None),
            proxy_defaults: Some(Local),
        };
        assert_eq!(all.resolve(), (Remote, ModeSource::Upstream));
        let no_upstream = ModeSettings {
            upstream: Option::None,
            ..all
        };
        assert_eq!(no_upstream.resolve(), (Local, ModeSource::ServiceInstance));
        let only_defaults = ModeSettings {
            service_defaults: Some(Remote),
            proxy_defaults: Some(Local),
            ..ModeSettings::default()
        };
        assert_eq!(
            only_defaults.resolve(),
            (Remote, ModeSource::ServiceDefaults)
        );
        let only_proxy = ModeSettings {
            proxy_defaults: Some(Local),
            ..ModeSettings::default()
        };
        assert_eq!(only_proxy.resolve(), (Local, ModeSource::ProxyDefaults));
        assert_eq!(
            ModeSettings::default().resolve(),
            (None, ModeSource::Default)
        );
    }

    #[test]
    fn an_explicit_none_is_a_setting() {
        let s = ModeSettings {
            upstream: Some(None),
            proxy_defaults: Some(Local),
            ..ModeSettings::default()
        };
        assert_eq!(s.resolve(), (None, ModeSource::Upstream));
    }

    #[test]
    fn parses_consul_spellings() {
        assert_eq!(MeshGatewayMode::parse("local"), Ok(Some(Local)));
        assert_eq!(MeshGatewayMode::parse("Remote"), Ok(Some(Remote)));
        assert_eq!(MeshGatewayMode::parse("none"), Ok(Some(None)));
        assert_eq!(MeshGatewayMode::parse(""), Ok(Option::None));
        assert!(MeshGatewayMode::parse("sideways").is_err());
    }
}
