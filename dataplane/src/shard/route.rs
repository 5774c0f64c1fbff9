//! The Hello and Connecting phases: read the ClientHello without consuming
//! it, look the name up once, pick an endpoint, connect with a timeout, and
//! fall through the route's other endpoints on refusal or timeout.

use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use routing_table::{eligible, Balancer, RouteId};
use tracing::{debug, warn};

use super::{Epoch, Phase, Shard, Starved};
use crate::driver::{Completion, Driver, Group, Interest, OpKind, Token};
use crate::forward::ForwardMode;
use crate::hello::{self, Outcome};
use crate::stats::{CloseReason, CONNECT_BUCKETS};
use crate::sys;
use crate::timers::{Deadline, TimerKind};

impl<D: Driver> Shard<D> {
    /// Brings the shard's view of the table up to date (one atomic load).
    pub(super) fn refresh_table(&mut self) {
        let current = self.table_cache.load();
        if !Arc::ptr_eq(current, &self.epoch.table) {
            let table = Arc::clone(current);
            let mut balancer = Balancer::with_panic_threshold(
                &table,
                self.cfg.id as u64 + self.now_ms,
                self.cfg.panic_threshold,
            );
            // Unchanged routes keep their round robin position.
            balancer.carry_round_robin(&self.balancer, &self.epoch.table, &table);
            self.balancer = balancer;
            self.routes.new_table(table.len());
            self.epoch = Rc::new(Epoch {
                table,
                generation: self.epoch.generation.wrapping_add(1),
            });
        }
    }

    pub(super) fn on_peek(&mut self, slot: u32, generation: u16, c: Completion) {
        let n = match c.io_result() {
            Ok(0) => return self.close(slot, generation, CloseReason::ClientClosedEarly),
            Ok(n) => n as usize,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.starved.push((slot, generation, Starved::Peek));
                return;
            }
            Err(_) => return self.close(slot, generation, CloseReason::ClientError),
        };
        let Some(bid) = c.buffer else {
            return self.close(slot, generation, CloseReason::ClientError);
        };
        self.refresh_table();
        enum Decision {
            Route(RouteId, usize, u32, bool),
            Wait(usize),
            Close(CloseReason),
        }
        let logging = self.cfg.access_log.is_some();
        let mut sni_for_log: Option<Box<str>> = None;
        let decision = {
            let data = self.driver.buffer(Group::Peek, bid, n);
            let outcome = hello::parse(data, &mut self.scratch);
            if let (true, Outcome::Sni { name, .. }) = (logging, &outcome) {
                sni_for_log = Some(String::from_utf8_lossy(name).into());
            }
            match outcome {
                Outcome::Sni { name, .. } => match self.epoch.table.lookup(name) {
                    Some(m) => {
                        debug!(shard = self.cfg.id, sni = %String::from_utf8_lossy(name), route = %m.route.sni, "routed");
                        let stats =
                            self.routes
                                .index_for(m.id.index(), &m.route.sni, &self.stats.routes);
                        match self.balancer.pick(&self.epoch.table, m.id) {
                            Some(first) => {
                                Decision::Route(m.id, first, stats, self.balancer.in_panic(m.id))
                            }
                            None => {
                                debug!(shard = self.cfg.id, route = %m.route.sni, "no healthy endpoint, panic routing off");
                                Decision::Close(CloseReason::UpstreamUnreachable)
                            }
                        }
                    }
                    None => {
                        debug!(shard = self.cfg.id, sni = %String::from_utf8_lossy(name), "no route for name");
                        Decision::Close(CloseReason::UnknownSni)
                    }
                },
                Outcome::NeedMore { at_least } => Decision::Wait(at_least),
                Outcome::NoSni => Decision::Close(CloseReason::NoSni),
                Outcome::Invalid(e) => {
                    debug!(shard = self.cfg.id, error = %e, "bad ClientHello");
                    Decision::Close(CloseReason::BadHello(e.label()))
                }
            }
        };
        self.driver.recycle(Group::Peek, bid);
        if let Some(sni) = sni_for_log {
            if let Some(log) = self
                .conns
                .get_mut(slot, generation)
                .and_then(|c| c.log.as_mut())
            {
                log.sni = Some(sni);
            }
        }
        match decision {
            Decision::Close(reason) => self.close(slot, generation, reason),
            Decision::Route(route, first, stats, panic) => {
                let epoch = Rc::clone(&self.epoch);
                let Some(conn) = self.conns.get_mut(slot, generation) else {
                    return;
                };
                let counters = self.routes.get(stats);
                counters.opened.add(1);
                counters.active.add(1);
                conn.route_stats = Some(stats);
                conn.phase = Phase::Connecting {
                    epoch,
                    route,
                    first,
                    attempt: 0,
                    panic,
                };
                self.start_connect(slot, generation);
            }
            Decision::Wait(at_least) => {
                let Some(conn) = self.conns.get_mut(slot, generation) else {
                    return;
                };
                let Phase::Hello { peeked } = &mut conn.phase else {
                    return;
                };
                if n <= *peeked {
                    // Readiness came without new bytes: the client closed
                    // (or failed) with half a hello.
                    return self.close(slot, generation, CloseReason::ClientClosedEarly);
                }
                *peeked = n;
                if sys::set_recv_lowat(conn.client.as_fd(), at_least).is_err() {
                    return self.close(slot, generation, CloseReason::ClientError);
                }
                conn.lowat_raised = true;
                conn.inflight += 1;
                let raw = conn.client.as_raw_fd();
                self.driver.poll(
                    Token::new(OpKind::PeekPoll, slot, generation),
                    raw,
                    Interest::Read,
                );
            }
        }
    }

    /// Dials the next endpoint of the connection's route.
    pub(super) fn start_connect(&mut self, slot: u32, generation: u16) {
        let default_timeout = self.cfg.connect_timeout;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let Phase::Connecting {
            epoch,
            route,
            first,
            attempt,
            panic,
        } = &mut conn.phase
        else {
            return;
        };
        let route_ref = epoch.table.route(*route);
        let len = route_ref.endpoints.len();
        // Fall through to the next endpoint that may take traffic: the
        // healthy ones, or all while the route is in panic.
        while *attempt < len && !eligible(route_ref, (*first + *attempt) % len, *panic) {
            *attempt += 1;
        }
        if *attempt >= len {
            return self.close(slot, generation, CloseReason::UpstreamUnreachable);
        }
        let index = (*first + *attempt) % len;
        let addr = route_ref.endpoints[index].addr;
        let timeout = route_ref.connect_timeout.unwrap_or(default_timeout);
        let fd = match sys::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                self.stats.upstream_socket_errors.add(1);
                if self.warning_due() {
                    warn!(
                        shard = self.cfg.id,
                        error = %e,
                        failures = self.stats.upstream_socket_errors.get(),
                        "cannot create upstream socket; closing the connection"
                    );
                }
                return self.close(slot, generation, CloseReason::Resource);
            }
        };
        let raw = fd.as_raw_fd();
        conn.upstream = Some(fd);
        conn.endpoint = Some((epoch.generation, *route, index));
        conn.connect_started = Some(Instant::now());
        conn.inflight += 2;
        self.driver.connect(
            Token::new(OpKind::Connect, slot, generation),
            Token::new(OpKind::ConnectTimeout, slot, generation),
            raw,
            &sys::RawSockAddr::new(&addr),
            timeout,
        );
    }

    pub(super) fn on_connect(&mut self, slot: u32, generation: u16, c: Completion) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if let Err(e) = c.io_result() {
            match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => self.stats.connect_refused.add(1),
                Some(libc::ECANCELED | libc::ETIMEDOUT) => self.stats.connect_timeout.add(1),
                _ => self.stats.connect_error.add(1),
            }
            let Phase::Connecting {
                epoch,
                route,
                attempt,
                ..
            } = &mut conn.phase
            else {
                return;
            };
            let endpoints = epoch.table.route(*route).endpoints.len();
            debug!(shard = self.cfg.id, error = %e, attempt = *attempt, "upstream connect failed");
            // The connect is complete, so its socket may be closed now.
            conn.upstream = None;
            conn.endpoint = None;
            *attempt += 1;
            if *attempt < endpoints {
                return self.start_connect(slot, generation);
            }
            return self.close(slot, generation, CloseReason::UpstreamUnreachable);
        }
        // Connected: forget the table, start both directions.
        if let (Some(log), Phase::Connecting { epoch, route, .. }, Some((_, _, index))) =
            (conn.log.as_mut(), &conn.phase, conn.endpoint)
        {
            log.endpoint = Some(epoch.table.route(*route).endpoints[index].addr);
        }
        let keepalive = match &conn.phase {
            Phase::Connecting { epoch, route, .. } => epoch.table.route(*route).keepalive,
            _ => None,
        };
        conn.phase = Phase::Forwarding;
        conn.forwarded = true;
        if let Some(started) = conn.connect_started {
            self.stats
                .connect_time
                .record(&CONNECT_BUCKETS, started.elapsed().as_micros() as u64);
        }
        if let Some((epoch, route, index)) = conn.endpoint {
            if epoch == self.epoch.generation {
                self.balancer.started(route, index);
            }
        }
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        if conn.lowat_raised {
            let _ = sys::set_recv_lowat(conn.client.as_fd(), 1);
            conn.lowat_raised = false;
        }
        let _ = sys::set_nodelay(conn.client.as_fd());
        let _ = sys::set_nodelay(upstream.as_fd());
        if let Some(keepalive) = keepalive {
            if let Err(e) = sys::set_keepalive(upstream.as_fd(), &keepalive) {
                debug!(shard = self.cfg.id, error = %e, "cannot set TCP keepalive upstream");
            }
        }
        conn.last_active_ms = self.now_ms;
        self.stats.forwarded.add(1);
        self.timers.push(Deadline {
            at_ms: self.now_ms + self.cfg.idle_timeout.as_millis() as u64,
            slot,
            generation,
            kind: TimerKind::Idle,
        });
        if self.cfg.forward == ForwardMode::Sockmap {
            return self.start_kernel_forwarding(slot, generation);
        }
        for d in 0..2 {
            self.arm_read(slot, generation, d);
        }
    }
}
