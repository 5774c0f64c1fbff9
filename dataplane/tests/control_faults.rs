//! Issue 8: control-plane faults on the data plane's side. The routes file is what the
//! agent writes; here it goes wrong in every way a writer or a disk can make it go
//! wrong, while the gateway serves:
//!
//! - **truncated**: a good version 2 cut in half, renamed over the file;
//! - **half-written in place**: the file rewritten without a rename, in two steps, each
//!   closing the file (so the gateway's inotify watch fires in between and it reads the
//!   half file); the second step completes it, and that version is then taken;
//! - **huge**: a file past [`MAX_ROUTES_FILE_BYTES`] (sparse, so it costs no disk), refused
//!   unread with a message naming the limit;
//! - **lower version**: a valid file whose version is lower than the table in use.
//!
//! After each, the table in use must be the last good one: the same backend answers the
//! same name (traffic), `meshgate_table_version` has not moved, and `/routes` still lists
//! it. The control path does not depend on the engine, so this runs on the default
//! variant only.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::admin::{http_get, Metrics};
use common::routes::to_json;
use common::*;

const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// `meshgate::serve::MAX_ROUTES_FILE_BYTES`.
const MAX_ROUTES_FILE_BYTES: u64 = 1 << 30;

/// Swallows file events that are still arriving, so the next wait is about what the test
/// does next.
fn settle(gw: &Gateway) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = gw.log();
}

struct Rig {
    gw: Gateway,
    routes: RoutesFile,
    admin: SocketAddr,
    name: String,
    a: RawBackend,
    b: RawBackend,
}

impl Rig {
    fn start() -> Rig {
        let name = sni("api", "dc1");
        let a = RawBackend::start("a", "127.0.0.1:0", RawMode::Echo).unwrap();
        let b = RawBackend::start("b", "127.0.0.1:0", RawMode::Echo).unwrap();
        let routes = RoutesFile::json(&to_json(Some(1), &[Route::new(&name, [a.addr()])]));
        let mut opts = GatewayOpts::new(routes.path(), Forward::Splice);
        opts.extra_args = vec!["--admin".into(), "127.0.0.1:0".into()];
        let gw = Gateway::start(&opts);
        let admin = gw.admin_addr();
        Rig {
            gw,
            routes,
            admin,
            name,
            a,
            b,
        }
    }

    /// The JSON of version `version` routing the name to backend `to`.
    fn file(&self, version: u64, to: &RawBackend) -> String {
        to_json(Some(version), &[Route::new(&self.name, [to.addr()])])
    }

    /// The table in use is version `version` and sends the name to backend `id`.
    fn assert_serving(&self, version: u64, id: &str, what: &str) {
        assert_eq!(
            which_backend(self.gw.addr(), &self.name, what),
            id,
            "{what}: the name went elsewhere"
        );
        assert_eq!(
            Metrics::read(self.admin).get("meshgate_table_version"),
            version,
            "{what}: meshgate_table_version"
        );
        let (status, body) = http_get(self.admin, "/routes");
        assert_eq!(status, 200, "{what}: GET /routes");
        let backend = if id == "a" { &self.a } else { &self.b };
        assert!(
            body.contains(&backend.addr().to_string()) && body.contains(&self.name),
            "{what}: /routes does not list the route to {id}: {body}"
        );
        self.gw.assert_running();
    }

    /// Waits for `routes refused` and returns its line.
    fn refused(&self, what: &str) -> String {
        let line = self.gw.wait_routes_refused(RELOAD_WAIT);
        eprintln!("{what}: {line}");
        line
    }
}

#[test]
fn truncated_file_keeps_the_table() {
    run_bounded("truncated", Duration::from_secs(60), || {
        let rig = Rig::start();
        rig.assert_serving(1, "a", "at start");
        let good = rig.file(2, &rig.b);
        for cut in [good.len() / 2, 1, good.len() - 2] {
            rig.routes.replace(&good[..cut]);
            rig.refused(&format!("cut at {cut} of {} bytes", good.len()));
            rig.assert_serving(1, "a", &format!("after a file cut at byte {cut}"));
        }
        // An empty file (a writer that died right after creating it).
        rig.routes.replace("");
        rig.refused("empty file");
        rig.assert_serving(1, "a", "after an empty file");
        settle(&rig.gw);
        rig.routes.replace(&good);
        rig.gw.wait_routes_loaded(Some(2), RELOAD_WAIT);
        rig.assert_serving(2, "b", "after the whole file");
    });
}

#[test]
fn half_written_in_place_is_refused_then_taken_whole() {
    run_bounded("half-written", Duration::from_secs(60), || {
        let rig = Rig::start();
        rig.assert_serving(1, "a", "at start");
        let good = rig.file(2, &rig.b);
        let (first, second) = good.as_bytes().split_at(good.len() / 2);
        // Step one: truncate and write half, then close (IN_CLOSE_WRITE).
        let mut f = std::fs::File::create(rig.routes.path()).unwrap();
        f.write_all(first).unwrap();
        f.sync_all().unwrap();
        drop(f);
        rig.refused("half the file, written in place");
        rig.assert_serving(1, "a", "with half a file on disk");
        // Step two: the rest, then close: now it is whole.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(rig.routes.path())
            .unwrap();
        f.write_all(second).unwrap();
        drop(f);
        rig.gw.wait_routes_loaded(Some(2), RELOAD_WAIT);
        rig.assert_serving(2, "b", "once the file is whole");
    });
}

#[test]
fn huge_file_is_refused_unread() {
    run_bounded("huge", Duration::from_secs(60), || {
        let rig = Rig::start();
        rig.assert_serving(1, "a", "at start");
        let rss_before = rig.gw.rss_kib();
        // A valid head, then a sparse tail past the limit (no disk blocks are written).
        let mut tmp = rig.routes.path().as_os_str().to_owned();
        tmp.push(".tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(rig.file(2, &rig.b).as_bytes()).unwrap();
        f.set_len(MAX_ROUTES_FILE_BYTES + 1).unwrap();
        drop(f);
        std::fs::rename(&tmp, rig.routes.path()).unwrap();
        let line = rig.refused("a file one byte past the limit");
        assert!(
            line.contains("larger than the limit of 1073741824 bytes"),
            "the refusal does not name the limit: {line}"
        );
        rig.assert_serving(1, "a", "after the huge file");
        let rss_after = rig.gw.rss_kib();
        eprintln!("RSS {rss_before} KiB before, {rss_after} KiB after the huge file");
        assert!(
            rss_after < rss_before + 64 * 1024,
            "RSS grew from {rss_before} KiB to {rss_after} KiB: the huge file was read"
        );
        settle(&rig.gw);
        rig.routes.replace(&rig.file(2, &rig.b));
        rig.gw.wait_routes_loaded(Some(2), RELOAD_WAIT);
        rig.assert_serving(2, "b", "after a good file");
    });
}

#[test]
fn lower_version_is_refused() {
    run_bounded("lower-version", Duration::from_secs(60), || {
        let rig = Rig::start();
        settle(&rig.gw);
        rig.routes.replace(&rig.file(5, &rig.b));
        rig.gw.wait_routes_loaded(Some(5), RELOAD_WAIT);
        rig.assert_serving(5, "b", "version 5");
        settle(&rig.gw);
        rig.routes.replace(&rig.file(4, &rig.a));
        let line = rig.refused("version 4 after 5");
        assert!(
            line.contains("older"),
            "the refusal does not say why: {line}"
        );
        rig.assert_serving(5, "b", "after version 4 was offered");
        // SIGHUP re-reads it: still refused.
        settle(&rig.gw);
        rig.gw.signal(libc::SIGHUP);
        rig.refused("version 4 again, on SIGHUP");
        rig.assert_serving(5, "b", "after SIGHUP");
        settle(&rig.gw);
        rig.routes.replace(&rig.file(6, &rig.a));
        rig.gw.wait_routes_loaded(Some(6), RELOAD_WAIT);
        rig.assert_serving(6, "a", "version 6");
    });
}
