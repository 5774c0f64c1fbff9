//! Routes files in throwaway directories, written and replaced the way an operator (or the
//! agent) would: a temporary file in the same directory, renamed over the real one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One endpoint of a route.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `"IP:PORT"`.
    Plain(SocketAddr),
    /// `{ address = "IP:PORT", weight = W }`.
    Weighted(SocketAddr, u32),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Plain(addr)
    }
}

/// One route: an SNI (exact or `*.suffix`) and its endpoints.
#[derive(Clone, Debug)]
pub struct Route {
    /// Exact name or `*.suffix`.
    pub sni: String,
    /// Tried in the gateway's order; a refused one is skipped.
    pub endpoints: Vec<Endpoint>,
    /// `connect_timeout_ms`, if set.
    pub connect_timeout_ms: Option<u64>,
}

impl Route {
    /// A route for `sni` to `endpoints` with the default connect timeout.
    pub fn new(sni: &str, endpoints: impl IntoIterator<Item = impl Into<Endpoint>>) -> Self {
        Route {
            sni: sni.to_string(),
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout_ms: None,
        }
    }
}

/// Renders a routes file in TOML.
pub fn to_toml(version: Option<u64>, routes: &[Route]) -> String {
    let mut out = String::new();
    if let Some(v) = version {
        out.push_str(&format!("version = {v}\n"));
    }
    for route in routes {
        out.push_str("\n[[routes]]\n");
        out.push_str(&format!("sni = \"{}\"\n", route.sni));
        let endpoints: Vec<String> = route
            .endpoints
            .iter()
            .map(|e| match e {
                Endpoint::Plain(a) => format!("\"{a}\""),
                Endpoint::Weighted(a, w) => format!("{{ address = \"{a}\", weight = {w} }}"),
            })
            .collect();
        out.push_str(&format!("endpoints = [{}]\n", endpoints.join(", ")));
        if let Some(ms) = route.connect_timeout_ms {
            out.push_str(&format!("connect_timeout_ms = {ms}\n"));
        }
    }
    out
}

/// Renders a routes file in JSON.
pub fn to_json(version: Option<u64>, routes: &[Route]) -> String {
    let routes: Vec<String> = routes
        .iter()
        .map(|route| {
            let endpoints: Vec<String> = route
                .endpoints
                .iter()
                .map(|e| match e {
                    Endpoint::Plain(a) => format!("\"{a}\""),
                    Endpoint::Weighted(a, w) => {
                        format!("{{\"address\": \"{a}\", \"weight\": {w}}}")
                    }
                })
                .collect();
            let timeout = route
                .connect_timeout_ms
                .map(|ms| format!(", \"connect_timeout_ms\": {ms}"))
                .unwrap_or_default();
            format!(
                "{{\"sni\": \"{}\", \"endpoints\": [{}]{timeout}}}",
                route.sni,
                endpoints.join(", ")
            )
        })
        .collect();
    let version = version
        .map(|v| format!("\"version\": {v}, "))
        .unwrap_or_default();
    format!("{{{version}\"routes\": [{}]}}\n", routes.join(", "))
}

/// A private temporary directory, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/meshgate-test-<pid>-<n>-<nanos>`.
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "meshgate-test-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A routes file in its own temporary directory.
pub struct RoutesFile {
    dir: TempDir,
    path: PathBuf,
}

impl RoutesFile {
    /// Writes `routes.toml` with `contents`.
    pub fn toml(contents: &str) -> RoutesFile {
        RoutesFile::named("routes.toml", contents)
    }

    /// Writes `routes.json` with `contents`.
    pub fn json(contents: &str) -> RoutesFile {
        RoutesFile::named("routes.json", contents)
    }

    /// Writes `name` (whose extension picks the format) with `contents`.
    pub fn named(name: &str, contents: &str) -> RoutesFile {
        let dir = TempDir::new();
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        RoutesFile { dir, path }
    }

    /// A TOML file for `routes` at `version`.
    pub fn from_routes(version: Option<u64>, routes: &[Route]) -> RoutesFile {
        RoutesFile::toml(&to_toml(version, routes))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the file atomically: writes `<name>.tmp` beside it, then renames it over.
    pub fn replace(&self, contents: &str) {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.path)
            .unwrap_or_else(|e| panic!("rename over {}: {e}", self.path.display()));
    }

    /// [`RoutesFile::replace`] with a TOML rendering of `routes`.
    pub fn replace_routes(&self, version: Option<u64>, routes: &[Route]) {
        self.replace(&to_toml(version, routes));
    }
}
