//! The Forwarding phase: arms each direction's next operation and turns
//! its completions into the next step (see [`crate::forward`]).

use std::os::fd::AsRawFd;

use super::{ends, failure, read_kind, write_kind, Phase, Shard, Starved};
use crate::driver::{Completion, Driver, Group, Interest, OpKind, Token};
use crate::forward::{ForwardMode, Step, Switch};
use crate::stats::CloseReason;
use crate::sys;

impl<D: Driver> Shard<D> {
    pub(super) fn arm_read(&mut self, slot: u32, generation: u16, d: usize) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let Some(upstream) = conn.upstream.as_ref() else {
            return;
        };
        let src = if d == 0 { &conn.client } else { upstream }.as_raw_fd();
        conn.inflight += 1;
        let token = Token::new(read_kind(d), slot, generation);
        match conn.dirs[d].mode(conn.mode(self.cfg.forward)) {
            ForwardMode::Splice | ForwardMode::RingSplice => {
                self.driver.poll(token, src, Interest::Read)
            }
            ForwardMode::Copy => {
                conn.dirs[d].armed();
                self.stats.copy_receives.add(1);
                self.driver.recv_stream(token, src, Group::Io)
            }
            // Sockmap: the FIN or an error (passed bytes are announced by
            // the program's events: a socket in the map reads as readable
            // after every skb).
            ForwardMode::Sockmap => self.driver.poll(token, src, Interest::Hangup),
            ForwardMode::Adaptive => unreachable!("resolved per direction"),
        }
    }

    pub(super) fn on_forward(
        &mut self,
        slot: u32,
        generation: u16,
        d: usize,
        kind: OpKind,
        c: Completion,
    ) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let mode = conn.mode(self.cfg.forward);
        if mode == ForwardMode::Sockmap {
            return self.on_kernel_event(slot, generation, d, kind == read_kind(d), c);
        }
        // Adaptive: this direction copies or splices, as it last chose.
        let adaptive = mode == ForwardMode::Adaptive;
        let mode = conn.dirs[d].mode(mode);
        let Some((src, dst)) = ends(&conn.client, conn.upstream.as_ref(), d) else {
            return;
        };
        let is_read = kind == read_kind(d);
        let before = conn.dirs[d].bytes;
        let step = match mode {
            ForwardMode::Splice => {
                conn.dirs[d].pump_splice(src, dst, &mut self.pipes, c.result, now)
            }
            ForwardMode::Copy => {
                if is_read {
                    self.stats.copy_receive_completions.add(1);
                }
                let step =
                    conn.dirs[d].on_copy(&mut self.driver, &mut self.queue, is_read, c, adaptive);
                self.stats.copy_buffers_held.set(self.queue.held() as u64);
                if conn.dirs[d].take_stop() {
                    // The destination is slower than the source (or the
                    // direction streams): end the multishot receive.
                    conn.inflight += 1;
                    self.driver.cancel(
                        Token::new(OpKind::Cancel, slot, generation),
                        Token::new(read_kind(d), slot, generation),
                    );
                }
                step
            }
            ForwardMode::RingSplice => {
                conn.dirs[d].on_ring_splice(&mut self.pipes, is_read, c.result, now)
            }
            ForwardMode::Sockmap | ForwardMode::Adaptive => {
                unreachable!("handled by on_kernel_event, or resolved per direction")
            }
        };
        let moved = conn.dirs[d].bytes - before;
        if moved > 0 {
            conn.last_active_ms = now;
            let route = conn.route_stats.map(|i| self.routes.get(i));
            if d == 0 {
                self.stats.bytes_to_upstream.add(moved);
                if let Some(r) = route {
                    r.bytes_to_upstream.add(moved);
                }
            } else {
                self.stats.bytes_to_client.add(moved);
                if let Some(r) = route {
                    r.bytes_to_client.add(moved);
                }
            }
        }
        self.stats.pipes.set(self.pipes.live() as u64);
        match step {
            Step::Read => {
                if adaptive {
                    match conn.dirs[d].adapt() {
                        Some(Switch::ToSplice) => self.stats.switched_to_splice.add(1),
                        Some(Switch::ToCopy) => self.stats.switched_to_copy.add(1),
                        None => {}
                    }
                }
                self.arm_read(slot, generation, d)
            }
            Step::Write => {
                let raw = dst.as_raw_fd();
                conn.inflight += 1;
                let token = Token::new(write_kind(d), slot, generation);
                match mode {
                    ForwardMode::Splice => self.driver.poll(token, raw, Interest::Write),
                    ForwardMode::Copy => conn.dirs[d].send_pending(&mut self.driver, token, raw),
                    ForwardMode::Sockmap | ForwardMode::Adaptive => {
                        unreachable!("handled by on_kernel_event, or resolved per direction")
                    }
                    ForwardMode::RingSplice => {
                        let dir = &conn.dirs[d];
                        let (Some((pipe_out, _)), Ok(len)) =
                            (dir.pipe_fds(), u32::try_from(dir.in_pipe()))
                        else {
                            unreachable!("ring-splice Write without a filled pipe")
                        };
                        // The poll and the splice: two completions.
                        conn.inflight += 1;
                        self.driver.splice_when_ready(
                            Token::new(OpKind::ChainPoll, slot, generation),
                            token,
                            raw,
                            Interest::Write,
                            pipe_out,
                            raw,
                            len,
                        );
                    }
                }
            }
            Step::Fill => {
                let Some((_, pipe_in)) = conn.dirs[d].pipe_fds() else {
                    unreachable!("ring-splice Fill without a pipe")
                };
                let raw = src.as_raw_fd();
                let len = u32::try_from(self.pipes.pipe_size()).unwrap_or(u32::MAX);
                // The poll and the splice: two completions.
                conn.inflight += 2;
                self.driver.splice_when_ready(
                    Token::new(OpKind::ChainPoll, slot, generation),
                    Token::new(read_kind(d), slot, generation),
                    raw,
                    Interest::Read,
                    raw,
                    pipe_in,
                    len,
                );
            }
            Step::Eof => {
                // Pass the half-close on; the other direction keeps going.
                let _ = sys::shutdown_write(dst);
                conn.dirs[d].finish();
                if conn.dirs[1 - d].is_done() {
                    self.close(slot, generation, CloseReason::Done);
                }
            }
            Step::Starved => {
                if adaptive && conn.dirs[d].fall_back_to_copy() {
                    // No pipe: this direction copies instead.
                    self.stats.switched_to_copy.add(1);
                    self.note_pipe_errors();
                    return self.arm_read(slot, generation, d);
                }
                if mode.uses_pipes() {
                    // No pipe can be created (descriptors ran out). A
                    // connection that has not forwarded a byte yet is shed
                    // rather than held; the others wait for a pipe.
                    let fresh = conn.dirs.iter().all(|dir| dir.bytes == 0);
                    self.note_pipe_errors();
                    if fresh {
                        return self.close(slot, generation, CloseReason::Resource);
                    }
                }
                self.starved.push((slot, generation, Starved::Dir(d)))
            }
            Step::PipeLimit => self.starved.push((slot, generation, Starved::Dir(d))),
            Step::Wait => {}
            Step::SourceFailed => self.close(slot, generation, failure(d, true)),
            Step::DestinationFailed => self.close(slot, generation, failure(d, false)),
        }
    }

    pub(super) fn retry_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        for (slot, generation, what) in std::mem::take(&mut self.starved) {
            let Some(conn) = self.conns.get_mut(slot, generation) else {
                continue;
            };
            if matches!(conn.phase, Phase::Closing) {
                continue;
            }
            match what {
                Starved::Peek => {
                    let raw = conn.client.as_raw_fd();
                    conn.inflight += 1;
                    self.driver.recv(
                        Token::new(OpKind::Peek, slot, generation),
                        raw,
                        Group::Peek,
                        true,
                    );
                }
                Starved::Dir(d) => match conn.dirs[d].mode(conn.mode(self.cfg.forward)) {
                    // Splice: pump again as if the source were readable
                    // (the direction has no operation in flight); the
                    // ring splice takes a pipe and fills it.
                    ForwardMode::Splice | ForwardMode::RingSplice => {
                        let ready = Completion {
                            token: Token::new(read_kind(d), slot, generation),
                            result: libc::POLLIN as i32,
                            buffer: None,
                            more: false,
                        };
                        self.on_forward(slot, generation, d, read_kind(d), ready);
                    }
                    // Copy: the receive found no buffer; ask again.
                    ForwardMode::Copy => self.arm_read(slot, generation, d),
                    // Sockmap directions wait through `retry_kernel`, never
                    // here.
                    ForwardMode::Sockmap | ForwardMode::Adaptive => {
                        unreachable!("retried by retry_kernel, or resolved per direction")
                    }
                },
            }
        }
    }
}
