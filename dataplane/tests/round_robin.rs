//! Round robin across table swaps: replacing the routes file with one where a route is
//! unchanged (another route added, the version raised) keeps that route's round robin where
//! it was, so its next connection goes to the next endpoint, not back to the first; a
//! route whose endpoints changed starts afresh. With reloads as frequent as connections
//! (Consul's catalog changes often), restarting at the first endpoint would send it every
//! connection.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_reload_between_connections_keeps_round_robin_going() {
    run_bounded(
        "a_reload_between_connections_keeps_round_robin_going",
        Duration::from_secs(60),
        || {
            let backends: Vec<RawBackend> = (0..3)
                .map(|i| RawBackend::start(&format!("b{i}"), "127.0.0.1:0", RawMode::Echo).unwrap())
                .collect();
            let name = sni("api", "dc1");
            let api = Route::new(&name, backends.iter().map(RawBackend::addr));
            let unreachable: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            let file = RoutesFile::from_routes(Some(1), std::slice::from_ref(&api));
            let mut opts = GatewayOpts::new(file.path(), Forward::Splice);
            // One shard: one balancer, so the order of picks is exact.
            opts.shards = 1;
            let gw = Gateway::start(&opts);
            for i in 0..9 {
                connect_echoed(gw.addr(), &name, i);
                // Another route changes; api does not.
                let version = i as u64 + 2;
                let other = Route::new(&sni(&format!("other{i}"), "dc1"), [unreachable]);
                file.replace_routes(Some(version), &[api.clone(), other]);
                gw.wait_routes_loaded(Some(version), Duration::from_secs(10));
            }
            let seen: Vec<usize> = backends.iter().map(RawBackend::accepts).collect();
            assert_eq!(seen, [3, 3, 3], "nine connections, a reload after each");
            gw.assert_running();
        },
    );
}
