//! The routes file: written atomically, versioned, and only when it changes.
//!
//! A new table goes to `<routes>.tmp` in the same directory, is fsynced,
//! renamed over the routes file (the data plane's inotify sees one
//! `IN_MOVED_TO`), and the directory is fsynced so the rename survives a
//! crash. The version only grows: at start the writer reads the file
//! already there and continues from its version, so a restarted agent
//! never offers the data plane a version it would refuse. A table whose
//! routes equal the last one written (or the one found at start) is not
//! written at all.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use routing_table::{drops_most, Format, ListenerSpec, RouteSpec, Snapshot};

/// Why the routes file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A file system step failed.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// The writer's memory of what is on disk.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    version: u64,
    routes: Option<Vec<RouteSpec>>,
    listeners: Vec<ListenerSpec>,
}

/// What [`Writer::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Written with this version.
    Written(u64),
    /// The routes on disk are the same; nothing written.
    Unchanged,
}

impl Writer {
    /// Opens the writer for `path`, reading the version and routes of the
    /// file already there (a missing file is version 0; an unreadable one
    /// logs a warning and keeps whatever version can still be found in it).
    pub fn open(path: &Path) -> Writer {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let (version, routes, listeners) = match fs::read_to_string(path) {
            Ok(text) => {
                let format = Format::from_path(path).unwrap_or(Format::Json);
                match Snapshot::parse(&text, format) {
                    Ok(s) => (s.version.unwrap_or(0), Some(s.routes), s.listeners),
                    Err(e) => {
                        let version = salvage_version(&text);
                        tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            version,
                            "the routes file there does not parse; it will be replaced"
                        );
                        (version, None, Vec::new())
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None, Vec::new()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the routes file there");
                (0, None, Vec::new())
            }
        };
        Writer {
            path: path.to_owned(),
            tmp,
            version,
            routes,
            listeners,
        }
    }

    /// The last version written or found.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes `snapshot` (its version is replaced by the next one) unless
    /// its routes and listeners equal the last written.
    ///
    /// # Errors
    /// A file system failure; the writer's state is unchanged, so the same
    /// offer can be retried.
    pub fn offer(&mut self, snapshot: &Snapshot) -> Result<Offered, WriteError> {
        if self.routes.as_ref() == Some(&snapshot.routes) && self.listeners == snapshot.listeners {
            return Ok(Offered::Unchanged);
        }
        let version = self.version + 1;
        // The table is what Consul says, so the file says it means it when
        // it is empty or loses most routes at once (the data plane refuses
        // such a file otherwise). With nothing known on disk to compare
        // against, a drop cannot be told apart from a first table.
        let previous = self.routes.as_ref().map(Vec::len);
        let out = Snapshot {
            version: Some(version),
            allow_empty: snapshot.routes.is_empty(),
            allow_drop: match previous {
                Some(p) => drops_most(p, snapshot.routes.len()),
                None => true,
            },
            routes: snapshot.routes.clone(),
            listeners: snapshot.listeners.clone(),
        };
        let mut text = out.to_json();
        text.push('\n');
        write_atomic(&self.path, &self.tmp, text.as_bytes())?;
        self.version = version;
        self.routes = Some(out.routes);
        self.listeners = out.listeners;
        Ok(Offered::Written(version))
    }
}

/// The `"version": N` of a file that no longer parses as a whole.
fn salvage_version(text: &str) -> u64 {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(n) = v.get("version").and_then(serde_json::Value::as_u64) {
            return n;
        }
    }
    text.lines()
        .find_map(|l| {
            let l = l.trim().trim_start_matches('"');
            let rest = l.strip_prefix("version")?;
            let rest = rest.trim_start_matches(['"', ' ', ':', '=']);
            rest.trim_end_matches(',').trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Writes `bytes` to `tmp`, fsyncs it, renames it over `path`, fsyncs the
/// directory.
///
/// # Errors
/// The step that failed; `tmp` is removed on failure.
pub fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let result = (|| {
        let mut f = File::create(tmp).map_err(io("creating", tmp))?;
        f.write_all(bytes).map_err(io("writing", tmp))?;
        f.sync_all().map_err(io("fsyncing", tmp))?;
        drop(f);
        fs::rename(tmp, path).map_err(io("renaming over", path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
        return result;
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsyncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing_table::EndpointSpec;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "meshgate-agent-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn snap(addr: &str) -> Snapshot {
        Snapshot {
            version: None,
            allow_empty: false,
            allow_drop: false,
            routes: vec![RouteSpec {
                sni: "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul".into(),
                endpoints: vec![EndpointSpec::Addr(addr.into())],
                connect_timeout_ms: None,
                lb_policy: None,
                keepalive: None,
            }],
            listeners: Vec::new(),
        }
    }

    #[test]
    fn writes_atomically_only_on_change_and_versions_grow_across_restarts() {
        let d = dir("writer");
        let path = d.join("routes.json");
        let mut w = Writer::open(&path);
        assert_eq!(w.version(), 0);
        assert_eq!(w.offer(&snap("127.0.0.1:1")).unwrap(), Offered::Written(1));
        assert_eq!(w.offer(&snap("127.0.0.1:1")).unwrap(), Offered::Unchanged);
        assert_eq!(w.offer(&snap("127.0.0.1:2")).unwrap(), Offered::Written(2));
        assert!(
            !d.join("routes.json.tmp").exists(),
            "the temporary file is renamed away"
        );
        let on_disk = Snapshot::parse(&fs::read_to_string(&path).unwrap(), Format::Json).unwrap();
        assert_eq!(on_disk.version, Some(2));
        // A restarted writer continues from the file's version and knows its routes.
        let mut w = Writer::open(&path);
        assert_eq!(w.version(), 2);
        assert_eq!(w.offer(&snap("127.0.0.1:2")).unwrap(), Offered::Unchanged);
        assert_eq!(w.offer(&snap("127.0.0.1:3")).unwrap(), Offered::Written(3));
        // A damaged file keeps its version.
        fs::write(&path, "{\n  \"version\": 41,\n  \"routes\": [ oops\n").unwrap();
        let mut w = Writer::open(&path);
        assert_eq!(w.version(), 41);
        assert_eq!(w.offer(&snap("127.0.0.1:3")).unwrap(), Offered::Written(42));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_table_or_a_large_drop_is_written_as_meant() {
        let d = dir("intent");
        let path = d.join("routes.json");
        let many = |n: usize| Snapshot {
            routes: (0..n)
                .map(|i| RouteSpec {
                    sni: format!("s{i}.example"),
                    endpoints: vec![EndpointSpec::Addr(format!("127.0.0.1:{}", 1000 + i))],
                    connect_timeout_ms: None,
                    lb_policy: None,
                    keepalive: None,
                })
                .collect(),
            ..Snapshot::default()
        };
        let on_disk =
            || Snapshot::parse(&fs::read_to_string(&path).unwrap(), Format::Json).unwrap();
        let mut w = Writer::open(&path);
        w.offer(&many(20)).unwrap();
        assert!(!on_disk().allow_empty);
        w.offer(&many(12)).unwrap();
        assert!(!on_disk().allow_drop, "12 of 20 is not most");
        w.offer(&many(5)).unwrap();
        assert!(on_disk().allow_drop, "5 of 12 is");
        w.offer(&many(0)).unwrap();
        assert!(on_disk().allow_empty);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let d = dir("fail");
        let path = d.join("missing-dir").join("routes.json");
        let mut w = Writer::open(&path);
        let e = w.offer(&snap("127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().starts_with("creating "), "{e}");
        assert_eq!(w.version(), 0);
        let _ = fs::remove_dir_all(&d);
    }
}
