//! `--pin`: `cores` pins each shard thread to one CPU; `none`, and `auto` on CPUs the
//! gateway shares with the rest of the host, leave the scheduler free to move shards
//! off CPUs other work keeps busy. Read from each thread's `Cpus_allowed_list`.

mod common;

use std::time::Duration;

use common::*;

/// `Cpus_allowed_list` of each `meshgate-shard-*` thread of `pid`.
fn shard_cpus(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("meshgate-shard") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            out.push(
                line.trim_start_matches("Cpus_allowed_list:")
                    .trim()
                    .to_owned(),
            );
        }
    }
    out.sort();
    out
}

fn cpus_of_this_process() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    line.trim_start_matches("Cpus_allowed_list:")
        .trim()
        .to_owned()
}

#[test]
fn pin_cores_pins_and_auto_on_a_shared_host_does_not() {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if available < 2 {
        eprintln!("skipped: one CPU, pinning cannot be told apart");
        return;
    }
    run_bounded(
        "pin_cores_pins_and_auto_on_a_shared_host_does_not",
        Duration::from_secs(60),
        move || {
            let file = RoutesFile::from_routes(
                Some(1),
                &[Route::new(&sni("api", "dc1"), [closed_port()])],
            );
            let all = cpus_of_this_process();
            for (pin, pinned) in [("cores", true), ("none", false), ("auto", false)] {
                let mut opts = GatewayOpts::new(file.path(), Forward::Splice);
                opts.shards = 2;
                opts.extra_args = vec!["--pin".into(), pin.into()];
                let gw = Gateway::start(&opts);
                let cpus = shard_cpus(gw.pid());
                assert_eq!(cpus.len(), 2, "two shard threads: {cpus:?}");
                if pinned {
                    assert!(
                        cpus.iter().all(|c| c.parse::<usize>().is_ok()),
                        "--pin {pin}: {cpus:?}"
                    );
                    assert_ne!(cpus[0], cpus[1], "--pin {pin}: one CPU each: {cpus:?}");
                } else {
                    assert!(
                        cpus.iter().all(|c| *c == all),
                        "--pin {pin}: {cpus:?} vs {all}"
                    );
                }
            }
        },
    );
}
