//! Each start-up warning about a low host limit names the fix that raises that limit: a
//! low open-file hard limit is fixed in the unit (`LimitNOFILE=`) or the shell
//! (`ulimit -Hn`), not by a sysctl preset, unless `fs.nr_open` itself is what stops it.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_low_open_file_limit_names_limitnofile() {
    run_bounded(
        "a_low_open_file_limit_names_limitnofile",
        Duration::from_secs(30),
        || {
            let file = RoutesFile::from_routes(
                Some(1),
                &[Route::new(&sni("api", "dc1"), [closed_port()])],
            );
            let mut opts = GatewayOpts::new(file.path(), Forward::Splice);
            opts.nofile = Some(4096);
            let gw = Gateway::start(&opts);
            let starting = gw.find_or_wait(Duration::from_secs(5), |l| l.contains("starting"));
            let nofile: u64 = field(&starting, "nofile").unwrap().parse().unwrap();
            if nofile >= 524_288 {
                eprintln!("skipped: this host let meshgate raise its hard limit to {nofile}");
                return;
            }
            let line = gw.find_or_wait(Duration::from_secs(5), |l| {
                l.contains("open-file limit (RLIMIT_NOFILE)")
            });
            let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if nr_open >= 524_288 {
                assert!(line.contains("LimitNOFILE="), "{line}");
                assert!(line.contains("ulimit -Hn"), "{line}");
                assert!(
                    !line.contains("tune.sh"),
                    "a sysctl does not raise it: {line}"
                );
            } else {
                assert!(line.contains("fs.nr_open"), "{line}");
            }
        },
    );
}
