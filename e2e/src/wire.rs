//! What crossed a wire: reads a pcap capture (as `tcpdump -w` writes it),
//! puts each TCP direction back together in sequence order, and checks that
//! every byte of every stream is a TLS record (type 20 to 23, version 3.1 to
//! 3.3, length within the limit), and that a given plaintext appears
//! nowhere in the capture.
//!
//! Pure parsing: no sockets, no clock. Untrusted input gives errors, never
//! panics.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Context};

/// The largest TLSCiphertext fragment: 2^14 + 2048.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// One direction of one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
}

/// What [`check_tls_only`] found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Packets in the capture.
    pub packets: usize,
    /// TCP directions that carried payload.
    pub flows: usize,
    /// Payload bytes over all flows.
    pub payload_bytes: usize,
    /// Records seen, by (content type, version major, version minor).
    pub records: BTreeMap<(u8, u8, u8), usize>,
    /// Flows whose bytes are not a sequence of TLS records, with why.
    pub not_tls: Vec<String>,
    /// Whether the plaintext was found anywhere in the captured bytes.
    pub plaintext_seen: bool,
}

impl Summary {
    /// Records of `content_type` with version 3.3 (TLS 1.2 framing, also used by 1.3).
    pub fn records_of(&self, content_type: u8) -> usize {
        self.records
            .iter()
            .filter(|((t, maj, min), _)| *t == content_type && *maj == 3 && *min == 3)
            .map(|(_, n)| n)
            .sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets, {} TCP flows with payload, {} payload bytes; records:",
            self.packets, self.flows, self.payload_bytes
        )?;
        for ((t, maj, min), n) in &self.records {
            let name = match t {
                20 => "change_cipher_spec",
                21 => "alert",
                22 => "handshake",
                23 => "application_data",
                _ => "?",
            };
            write!(f, " {name}(0x{t:02x} 0x{maj:02x} 0x{min:02x})={n}")?;
        }
        write!(
            f,
            "; non-TLS flows: {}; plaintext seen: {}",
            self.not_tls.len(),
            self.plaintext_seen
        )
    }
}

struct Segment {
    seq: u32,
    syn: bool,
    payload: Vec<u8>,
}

/// Parses the pcap `bytes` and checks every TCP flow in it.
///
/// # Errors
/// The capture itself is malformed (bad header, truncated record, link type
/// other than Ethernet or Linux cooked).
pub fn check_tls_only(bytes: &[u8], plaintext: &[u8]) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        plaintext_seen: !plaintext.is_empty()
            && bytes.windows(plaintext.len()).any(|w| w == plaintext),
        ..Summary::default()
    };
    let mut flows: HashMap<Flow, Vec<Segment>> = HashMap::new();
    for frame in Pcap::parse(bytes)? {
        let frame = frame?;
        summary.packets += 1;
        if let Some((flow, seg)) = tcp_segment(frame.link, frame.data) {
            flows.entry(flow).or_default().push(seg);
        }
    }
    let mut ordered: Vec<_> = flows.into_iter().collect();
    ordered.sort_by_key(|(f, _)| *f);
    for (flow, segments) in ordered {
        let stream = reassemble(segments);
        if stream.is_empty() {
            continue;
        }
        summary.flows += 1;
        summary.payload_bytes += stream.len();
        if let Err(why) = records(&stream, &mut summary.records) {
            summary
                .not_tls
                .push(format!("{} -> {}: {why}", flow.src, flow.dst));
        }
    }
    Ok(summary)
}

/// Walks `stream` as TLS records, counting them.
fn records(stream: &[u8], counts: &mut BTreeMap<(u8, u8, u8), usize>) -> Result<(), String> {
    let mut at = 0;
    while at < stream.len() {
        let Some(h) = stream.get(at..at + 5) else {
            return Err(format!(
                "{} bytes at offset {at} are too short for a record header",
                stream.len() - at
            ));
        };
        let (t, maj, min) = (h[0], h[1], h[2]);
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if !(20..=23).contains(&t) || maj != 3 || !(1..=3).contains(&min) || len > MAX_RECORD {
            return Err(format!(
                "offset {at}: {:02x?} is not a TLS record header",
                &h[..5]
            ));
        }
        if at + 5 + len > stream.len() {
            return Err(format!("offset {at}: record of {len} bytes cut short"));
        }
        *counts.entry((t, maj, min)).or_default() += 1;
        at += 5 + len;
    }
    Ok(())
}

/// Puts one direction back together: from the SYN's sequence number (or
/// the lowest seen), in order, each byte once.
fn reassemble(mut segments: Vec<Segment>) -> Vec<u8> {
    let isn = segments
        .iter()
        .find(|s| s.syn)
        .map(|s| s.seq.wrapping_add(1))
        .or_else(|| segments.iter().map(|s| s.seq).min());
    let Some(isn) = isn else {
        return Vec::new();
    };
    segments.retain(|s| !s.payload.is_empty());
    segments.sort_by_key(|s| s.seq.wrapping_sub(isn));
    let mut out = Vec::new();
    for s in segments {
        let offset = s.seq.wrapping_sub(isn) as usize;
        if offset > out.len() {
            // A gap: bytes missing from the capture. Stop here; what follows
            // cannot be framed.
            break;
        }
        let skip = out.len() - offset;
        if skip < s.payload.len() {
            out.extend_from_slice(&s.payload[skip..]);
        }
    }
    out
}

/// Link types: 1 Ethernet, 113 Linux cooked v1, 276 Linux cooked v2.
fn tcp_segment(link: u32, data: &[u8]) -> Option<(Flow, Segment)> {
    let (ethertype, ip) = match link {
        1 => (
            u16::from_be_bytes([*data.get(12)?, *data.get(13)?]),
            data.get(14..)?,
        ),
        113 => (
            u16::from_be_bytes([*data.get(14)?, *data.get(15)?]),
            data.get(16..)?,
        ),
        276 => (
            u16::from_be_bytes([*data.first()?, *data.get(1)?]),
            data.get(20..)?,
        ),
        _ => return None,
    };
    let (src, dst, tcp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                ip.get(40..(40 + len).min(ip.len()))?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    let syn = tcp.get(13)? & 0x02 != 0;
    Some((
        Flow {
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
        },
        Segment {
            seq,
            syn,
            payload: tcp.get(off..)?.to_vec(),
        },
    ))
}

struct Frame<'a> {
    link: u32,
    data: &'a [u8],
}

struct Pcap<'a> {
    rest: &'a [u8],
    big_endian: bool,
    link: u32,
}

impl<'a> Pcap<'a> {
    fn parse(bytes: &'a [u8]) -> anyhow::Result<Pcap<'a>> {
        let header = bytes.get(..24).context("pcap: shorter than its header")?;
        let magic = [header[0], header[1], header[2], header[3]];
        let big_endian = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
            other => bail!("pcap: bad magic {other:02x?} (pcapng is not read; use tcpdump -w)"),
        };
        let mut p = Pcap {
            rest: &bytes[24..],
            big_endian,
            link: 0,
        };
        p.link = p.u32_at(&header[20..24]);
        if ![1, 113, 276].contains(&p.link) {
            bail!("pcap: link type {} is not Ethernet or Linux cooked", p.link);
        }
        Ok(p)
    }

    fn u32_at(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
}

impl<'a> Iterator for Pcap<'a> {
    type Item = anyhow::Result<Frame<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(h) = self.rest.get(..16) else {
            self.rest = &[];
            return Some(Err(anyhow::anyhow!("pcap: record header cut short")));
        };
        let caplen = self.u32_at(&h[8..12]) as usize;
        let Some(data) = self.rest.get(16..16 + caplen) else {
            self.rest = &[];
            return Some(Err(anyhow::anyhow!(
                "pcap: record of {caplen} bytes cut short"
            )));
        };
        self.rest = &self.rest[16 + caplen..];
        Some(Ok(Frame {
            link: self.link,
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[198, 19, 0, 2, 198, 19, 0, 1]);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0xc3, 0x50, 0x20, 0xfb];
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn records_split_retransmitted_and_out_of_order_are_framed() {
        let rec1 = [22, 3, 1, 0, 3, 1, 2, 3];
        let rec2 = [23, 3, 3, 0, 2, 9, 9];
        let mut stream = rec1.to_vec();
        stream.extend_from_slice(&rec2);
        let cap = pcap(&[
            frame(u32::MAX, 0x02, &[]),
            frame(4, 0x18, &stream[4..]),
            frame(0, 0x18, &stream[..6]),
            frame(0, 0x18, &stream[..6]),
        ]);
        let s = check_tls_only(&cap, b"hello").unwrap();
        assert_eq!(s.flows, 1);
        assert!(s.not_tls.is_empty(), "{s}");
        assert_eq!(s.records_of(23), 1);
        assert_eq!(s.records.get(&(22, 3, 1)), Some(&1));
        assert!(!s.plaintext_seen);
    }

    #[test]
    fn plaintext_is_not_tls_and_is_found() {
        let cap = pcap(&[frame(9, 0x02, &[]), frame(10, 0x18, b"hello world\n")]);
        let s = check_tls_only(&cap, b"hello").unwrap();
        assert_eq!(s.not_tls.len(), 1, "{s}");
        assert!(s.plaintext_seen);
    }

    #[test]
    fn every_prefix_of_a_capture_is_an_error_or_a_summary() {
        let cap = pcap(&[frame(0, 0x02, &[]), frame(1, 0x18, &[23, 3, 3, 0, 1, 7])]);
        for n in 0..cap.len() {
            let _ = check_tls_only(&cap[..n], b"x");
        }
    }
}
