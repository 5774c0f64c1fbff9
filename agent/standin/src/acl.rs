//! ACL tokens and rules, resolved the way Consul's HTTP layer does.
//!
//! The token comes from `?token=`, then `X-Consul-Token`, then
//! `Authorization: Bearer` (`agent/http.go`, parseToken). An unknown secret
//! is `403 ACL not found`; a missing right is `403 Permission denied: ...`
//! with `acl/errors.go`'s wording. Rules are a small subset of Consul's
//! policy language: per resource, an exact name or a name prefix, with
//! `deny`, `read` or `write`; an exact rule beats a prefix rule and the
//! longest prefix wins; `mesh` falls back to `operator`. This module decides;
//! the HTTP layer turns decisions into responses.

use serde::{Deserialize, Serialize};

/// The accessor ID Consul gives the anonymous token.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// A resource an ACL rule governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// `service` / `service_prefix`.
    Service,
    /// `node` / `node_prefix`.
    Node,
    /// `agent` / `agent_prefix`.
    Agent,
    /// `mesh` (no name).
    Mesh,
    /// `operator` (no name).
    Operator,
    /// `peering` (no name).
    Peering,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Node => "node",
            Self::Agent => "agent",
            Self::Mesh => "mesh",
            Self::Operator => "operator",
            Self::Peering => "peering",
        }
    }

    fn named(self) -> bool {
        matches!(self, Self::Service | Self::Node | Self::Agent)
    }
}

/// An access level; `Write` implies `Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Explicitly nothing.
    Deny,
    /// Read.
    Read,
    /// Read and write.
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// One policy rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// What it governs.
    pub resource: Resource,
    /// Name, or name prefix when `prefix` (empty prefix = everything).
    #[serde(default)]
    pub name: String,
    /// Whether `name` is a prefix.
    #[serde(default)]
    pub prefix: bool,
    /// Granted level.
    pub access: Access,
}

impl Rule {
    /// Parses `service:web:write`, `service_prefix::read`, `mesh:read`, `operator:write`.
    ///
    /// # Errors
    /// Returns a message naming the bad rule.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!("invalid ACL rule {s:?} (want RESOURCE[_prefix]:NAME:ACCESS or mesh:ACCESS)")
        };
        let (res, name, access) = match parts.as_slice() {
            [res, access] => (*res, "", *access),
            [res, name, access] => (*res, *name, *access),
            _ => return Err(bad()),
        };
        let (res, prefix) = match res.strip_suffix("_prefix") {
            Some(r) => (r, true),
            None => (res, false),
        };
        let resource = match res {
            "service" => Resource::Service,
            "node" => Resource::Node,
            "agent" => Resource::Agent,
            "mesh" => Resource::Mesh,
            "operator" => Resource::Operator,
            "peering" => Resource::Peering,
            _ => return Err(bad()),
        };
        let access = match access {
            "deny" => Access::Deny,
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return Err(bad()),
        };
        Ok(Self {
            resource,
            name: name.to_owned(),
            prefix: prefix || !resource.named(),
            access,
        })
    }
}

/// A token the stand-in knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// The secret clients send.
    pub secret: String,
    /// AccessorID shown in errors; default derived from the secret.
    #[serde(default)]
    pub accessor: Option<String>,
    /// `global-management`: everything allowed.
    #[serde(default)]
    pub management: bool,
    /// Rules, when not management.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl TokenSpec {
    /// A management token.
    pub fn management(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            accessor: None,
            management: true,
            rules: Vec::new(),
        }
    }

    /// A token with the given rules (`service_prefix::read`, ...).
    ///
    /// # Panics
    /// If a rule does not parse (a test-authoring mistake).
    pub fn with_rules(secret: &str, rules: &[&str]) -> Self {
        let rules = rules
            .iter()
            .map(|r| Rule::parse(r).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        Self {
            secret: secret.to_owned(),
            accessor: None,
            management: false,
            rules,
        }
    }

    /// Parses the CLI form `SECRET` (management) or `SECRET=RULE,RULE`.
    ///
    /// # Errors
    /// Returns a message naming the bad rule.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            None => Ok(Self::management(s)),
            Some((secret, "management")) => Ok(Self::management(secret)),
            Some((secret, rules)) => {
                let rules = rules
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(Rule::parse)
                    .collect::<Result<_, _>>()?;
                Ok(Self {
                    secret: secret.to_owned(),
                    accessor: None,
                    management: false,
                    rules,
                })
            }
        }
    }

    fn accessor_id(&self) -> String {
        self.accessor
            .clone()
            .unwrap_or_else(|| crate::model::uuid_from(&format!("accessor:{}", self.secret)))
    }
}

/// ACL settings. ACLs are off unless `enabled`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclConfig {
    /// Whether ACLs are enforced.
    #[serde(default)]
    pub enabled: bool,
    /// `acl.default_policy = "allow"` (default deny).
    #[serde(default)]
    pub default_allow: bool,
    /// Known tokens.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
    /// Rules of the anonymous token (requests without a token).
    #[serde(default)]
    pub anonymous_rules: Vec<Rule>,
}

/// A 403 from ACL resolution or enforcement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// The secret is unknown.
    #[error("ACL not found")]
    NotFound,
    /// A right is missing; the text is Consul's.
    #[error("{0}")]
    Denied(String),
}

/// What a resolved token may do.
#[derive(Clone, Debug)]
pub(crate) struct Authz {
    kind: Principal,
    default_allow: bool,
}

#[derive(Clone, Debug)]
enum Principal {
    Disabled,
    Management,
    Token { accessor: String, rules: Vec<Rule> },
    Anonymous { rules: Vec<Rule> },
}

impl Authz {
    /// Everything allowed (ACLs off).
    pub fn allow_all() -> Self {
        Self {
            kind: Principal::Disabled,
            default_allow: true,
        }
    }

    /// Resolves a secret (`""` = no token) against the configuration.
    pub fn resolve(cfg: &AclConfig, secret: &str) -> Result<Self, AclError> {
        if !cfg.enabled {
            return Ok(Self::allow_all());
        }
        let kind = if secret.is_empty() || secret == "anonymous" {
            Principal::Anonymous {
                rules: cfg.anonymous_rules.clone(),
            }
        } else {
            let t = cfg
                .tokens
                .iter()
                .find(|t| t.secret == secret)
                .ok_or(AclError::NotFound)?;
            if t.management {
                Principal::Management
            } else {
                Principal::Token {
                    accessor: t.accessor_id(),
                    rules: t.rules.clone(),
                }
            }
        };
        Ok(Self {
            kind,
            default_allow: cfg.default_allow,
        })
    }

    fn level_from(rules: &[Rule], res: Resource, name: &str) -> Option<Access> {
        let mut best: Option<(bool, usize, Access)> = None;
        for r in rules.iter().filter(|r| r.resource == res) {
            let (exact, len) = if !res.named() {
                (true, 0)
            } else if !r.prefix && r.name == name {
                (true, r.name.len())
            } else if r.prefix && name.starts_with(&r.name) {
                (false, r.name.len())
            } else {
                continue;
            };
            let better = match best {
                None => true,
                Some((e, l, _)) => (exact, len) > (e, l),
            };
            if better {
                best = Some((exact, len, r.access));
            }
        }
        best.map(|(_, _, a)| a)
    }

    fn level(&self, res: Resource, name: &str) -> Access {
        let rules = match &self.kind {
            Principal::Disabled | Principal::Management => return Access::Write,
            Principal::Token { rules, .. } | Principal::Anonymous { rules } => rules,
        };
        let found = Self::level_from(rules, res, name).or_else(|| {
            matches!(res, Resource::Mesh | Resource::Peering)
                .then(|| Self::level_from(rules, Resource::Operator, ""))
                .flatten()
        });
        found.unwrap_or(if self.default_allow {
            Access::Write
        } else {
            Access::Deny
        })
    }

    /// Whether `want` is granted on `res` named `name`.
    pub fn allows(&self, res: Resource, name: &str, want: Access) -> bool {
        self.level(res, name) >= want
    }

    /// Like [`Authz::allows`], as Consul's 403 error when not granted.
    pub fn require(&self, res: Resource, name: &str, want: Access) -> Result<(), AclError> {
        if self.allows(res, name, want) {
            return Ok(());
        }
        let perm = format!("'{}:{}'", res.as_str(), want.as_str());
        let on = if res.named() && !name.is_empty() {
            format!(" on {name:?}")
        } else {
            String::new()
        };
        Err(AclError::Denied(match &self.kind {
            Principal::Anonymous { .. } => format!(
                "Permission denied: anonymous token lacks permission {perm}{on}. The anonymous token is used implicitly when a request does not specify a token."
            ),
            Principal::Token { accessor, .. } => {
                format!("Permission denied: token with AccessorID '{accessor}' lacks permission {perm}{on}")
            }
            Principal::Disabled | Principal::Management => format!("Permission denied: lacks permission {perm}{on}"),
        }))
    }

    /// Whether a config entry of `kind` named `name` may be read
    /// (`ConfigEntry.CanRead` per kind).
    pub fn entry_read(&self, kind: &str, name: &str) -> bool {
        self.entry_check(kind, name, Access::Read).is_ok()
    }

    /// The right a config entry read or write needs, as a 403 when missing.
    pub fn entry_check(&self, kind: &str, name: &str, want: Access) -> Result<(), AclError> {
        match kind {
            "proxy-defaults" if want == Access::Read => Ok(()),
            "proxy-defaults" | "mesh" | "exported-services" | "sameness-group" | "jwt-provider" => {
                if want == Access::Read {
                    self.require(Resource::Mesh, "", Access::Read)
                } else if self.allows(Resource::Operator, "", Access::Write) {
                    Ok(())
                } else {
                    self.require(Resource::Mesh, "", Access::Write)
                }
            }
            _ => self.require(Resource::Service, name, want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AclConfig {
        AclConfig {
            enabled: true,
            default_allow: false,
            tokens: vec![
                TokenSpec::management("root"),
                TokenSpec::with_rules(
                    "reader",
                    &[
                        "service_prefix::read",
                        "node_prefix::read",
                        "service:secret:deny",
                    ],
                ),
                TokenSpec {
                    accessor: Some("acc-1".into()),
                    ..TokenSpec::with_rules("web", &["service:web:write"])
                },
            ],
            anonymous_rules: vec![],
        }
    }

    #[test]
    fn resolution_and_precedence() {
        let c = cfg();
        assert_eq!(Authz::resolve(&c, "nope").unwrap_err(), AclError::NotFound);
        let root = Authz::resolve(&c, "root").unwrap();
        assert!(root.allows(Resource::Mesh, "", Access::Write));
        let reader = Authz::resolve(&c, "reader").unwrap();
        assert!(reader.allows(Resource::Service, "web", Access::Read));
        assert!(!reader.allows(Resource::Service, "web", Access::Write));
        assert!(
            !reader.allows(Resource::Service, "secret", Access::Read),
            "exact deny beats prefix"
        );
        let web = Authz::resolve(&c, "web").unwrap();
        assert_eq!(
            web.require(Resource::Service, "db", Access::Read).unwrap_err().to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:read' on \"db\""
        );
        let anon = Authz::resolve(&c, "").unwrap();
        assert!(anon
            .require(Resource::Mesh, "", Access::Read)
            .unwrap_err()
            .to_string()
            .starts_with("Permission denied: anonymous token lacks permission 'mesh:read'. The anonymous token"));
        assert!(Authz::resolve(&AclConfig::default(), "whatever")
            .unwrap()
            .allows(Resource::Service, "x", Access::Write));
    }

    #[test]
    fn cli_form() {
        assert!(TokenSpec::parse_cli("s3cr3t").unwrap().management);
        let t = TokenSpec::parse_cli("t=service_prefix::read,mesh:read").unwrap();
        assert_eq!(t.rules.len(), 2);
        assert!(t.rules[0].prefix && t.rules[0].name.is_empty());
        assert!(TokenSpec::parse_cli("t=bogus:x").is_err());
    }
}
