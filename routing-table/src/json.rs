//! A fast reader for JSON snapshots as the agent writes them, for
//! [`Table::parse`](crate::Table::parse) and
//! [`Snapshot::parse`](crate::Snapshot::parse).
//!
//! serde_json spends about 15 instructions per byte on a pretty-printed
//! snapshot (generic visitors for every key and value, whitespace a byte at
//! a time, a `String` per name and address): most of the cost of loading a
//! table of 100k routes. This reader knows the schema and handles its
//! common subset: strings without escapes, unsigned integers without sign,
//! fraction or exponent, each key at most once, no unknown key and no
//! `null`. It borrows every string from the text, and for
//! [`Table::parse`](crate::Table::parse) it validates each route into its
//! final [`table::Route`] as soon as the route is read, while its bytes are
//! still in cache: no intermediate vectors of routes or endpoints. Anything else (including every syntax or schema error) makes
//! [`parse`] return `None`, and the caller decodes the text again with
//! serde_json, which gives the value or the precise error. So for every
//! input the result is serde_json's; tests compare the two.

use crate::balance::LbPolicy;
use crate::build::{self, EndpointSource, RouteSource};
use crate::error::SnapshotError;
use crate::snapshot::{self, EndpointSpec, KeepaliveSpec, ListenerSpec, RouteSpec};
use crate::swar::{bytes_equal, control_bytes, load, HIGH};
use crate::table;

/// The routes of `text`, validated as they are read: the version, the
/// routes before the first invalid one, and that one's error if any; or
/// `None` if `text` is not in the subset this reader handles (see the
/// module docs; a syntax error anywhere wins over an invalid route, as
/// with serde_json, which reads the whole text before anything is built).
pub(crate) fn parse_routes(text: &str) -> Option<Validated> {
    let building = Building {
        endpoints: Vec::new(),
        index: 0,
        error: None,
    };
    let (header, routes, building) = read(text, building)?;
    // `Building::route` gives `None` from the first invalid route on.
    let routes = routes.into_iter().map_while(|route| route).collect();
    Some(Validated {
        header,
        routes,
        error: building.error,
    })
}

/// What [`parse_routes`] read.
pub(crate) struct Validated {
    /// The snapshot's version and intent flags.
    pub(crate) header: Header,
    /// The valid routes before the first invalid one, in order.
    pub(crate) routes: Vec<table::Route>,
    /// Why the first invalid route is invalid.
    pub(crate) error: Option<SnapshotError>,
}

/// The snapshot in `text` as [`Snapshot::parse`](crate::Snapshot::parse)
/// gives it, or `None` as for [`parse`].
pub(crate) fn parse_owned(text: &str) -> Option<snapshot::Snapshot> {
    let owned = Owned {
        endpoints: Vec::new(),
    };
    let (header, routes, _) = read(text, owned)?;
    Some(snapshot::Snapshot {
        version: header.version,
        allow_empty: header.allow_empty,
        allow_drop: header.allow_drop,
        listeners: header.listeners,
        routes,
    })
}

/// The top-level members of a snapshot other than its routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// `version`, if present.
    pub(crate) version: Option<u64>,
    /// `allow_empty`, false when absent.
    pub(crate) allow_empty: bool,
    /// `allow_drop`, false when absent.
    pub(crate) allow_drop: bool,
    /// `listeners`, empty when absent (a few at most: read owned).
    pub(crate) listeners: Vec<ListenerSpec>,
}

/// Reads the whole of `text` into `sink`.
fn read<'a, S: Sink<'a>>(text: &'a str, sink: S) -> Option<(Header, Vec<S::Route>, S)> {
    let mut reader = Reader { text, at: 0, sink };
    reader.whitespace();
    let (header, routes) = reader.snapshot()?;
    reader.whitespace();
    (reader.at == text.len()).then_some((header, routes, reader.sink))
}

/// What the reader makes of what it reads: validated routes (via
/// [`Building`]) or the owned snapshot (via [`Owned`]).
trait Sink<'a> {
    /// A route, made.
    type Route;
    /// An endpoint of the route being read.
    fn endpoint(&mut self, endpoint: Endpoint<'a>);
    /// The route being read, whose endpoints are those given since the
    /// last route.
    fn route(
        &mut self,
        sni: &'a str,
        connect_timeout_ms: Option<u64>,
        lb_policy: Option<LbPolicy>,
        keepalive: Option<KeepaliveSpec>,
    ) -> Self::Route;
}

/// Validates each route as it is read (for [`parse_routes`]).
struct Building<'a> {
    /// The endpoints of the route being read.
    endpoints: Vec<Endpoint<'a>>,
    /// The index of the route being read.
    index: usize,
    /// The first invalid route's error; routes after it are only read.
    error: Option<SnapshotError>,
}

impl<'a> Sink<'a> for Building<'a> {
    type Route = Option<table::Route>;

    fn endpoint(&mut self, endpoint: Endpoint<'a>) {
        if self.error.is_none() {
            self.endpoints.push(endpoint);
        }
    }

    fn route(
        &mut self,
        sni: &'a str,
        connect_timeout_ms: Option<u64>,
        lb_policy: Option<LbPolicy>,
        keepalive: Option<KeepaliveSpec>,
    ) -> Option<table::Route> {
        let index = self.index;
        self.index += 1;
        if self.error.is_some() {
            return None;
        }
        let read = Read {
            sni,
            endpoints: &self.endpoints,
            connect_timeout_ms,
            lb_policy,
            keepalive,
        };
        let built = build::route(index, &read);
        self.endpoints.clear();
        built.map_err(|error| self.error = Some(error)).ok()
    }
}

/// Makes the owned snapshot, with the strings and vectors serde would make.
struct Owned {
    /// The endpoints of the route being read.
    endpoints: Vec<EndpointSpec>,
}

impl<'a> Sink<'a> for Owned {
    type Route = RouteSpec;

    fn endpoint(&mut self, endpoint: Endpoint<'a>) {
        let address = endpoint.address.to_owned();
        self.endpoints.push(match endpoint.table {
            false => EndpointSpec::Addr(address),
            true => EndpointSpec::Weighted {
                address,
                weight: endpoint.weight,
                healthy: endpoint.healthy,
            },
        });
    }

    fn route(
        &mut self,
        sni: &'a str,
        connect_timeout_ms: Option<u64>,
        lb_policy: Option<LbPolicy>,
        keepalive: Option<KeepaliveSpec>,
    ) -> RouteSpec {
        RouteSpec {
            sni: sni.to_owned(),
            endpoints: self.endpoints.drain(..).collect(),
            connect_timeout_ms,
            lb_policy,
            keepalive,
        }
    }
}

/// A route as read, with its endpoints, for validation.
struct Read<'s, 'a> {
    sni: &'a str,
    endpoints: &'s [Endpoint<'a>],
    connect_timeout_ms: Option<u64>,
    lb_policy: Option<LbPolicy>,
    keepalive: Option<KeepaliveSpec>,
}

/// An endpoint as read.
pub(crate) struct Endpoint<'a> {
    address: &'a str,
    weight: Option<u32>,
    healthy: Option<bool>,
    /// Written as `{ "address": ... }`, not as a bare string.
    table: bool,
}

impl<'a> RouteSource for Read<'_, 'a> {
    type Endpoint = Endpoint<'a>;
    fn sni(&self) -> &str {
        self.sni
    }
    fn endpoints(&self) -> &[Endpoint<'a>] {
        self.endpoints
    }
    fn connect_timeout_ms(&self) -> Option<u64> {
        self.connect_timeout_ms
    }
    fn lb_policy(&self) -> Option<LbPolicy> {
        self.lb_policy
    }
    fn keepalive(&self) -> Option<KeepaliveSpec> {
        self.keepalive
    }
}

impl EndpointSource for Endpoint<'_> {
    fn address(&self) -> &str {
        self.address
    }
    fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
    fn healthy(&self) -> bool {
        self.healthy.unwrap_or(true)
    }
}

/// A position in the text, and where what is read goes.
struct Reader<'a, S> {
    text: &'a str,
    at: usize,
    sink: S,
}

impl<'a, S: Sink<'a>> Reader<'a, S> {
    fn snapshot(&mut self) -> Option<(Header, Vec<S::Route>)> {
        let mut version = None;
        let mut allow_empty = None;
        let mut allow_drop = None;
        let mut listeners = None;
        let mut routes = None;
        self.object(|r, key| {
            match key {
                "version" if version.is_none() => version = Some(r.integer()?),
                "allow_empty" if allow_empty.is_none() => allow_empty = Some(r.boolean()?),
                "allow_drop" if allow_drop.is_none() => allow_drop = Some(r.boolean()?),
                "listeners" if listeners.is_none() => {
                    let mut list = Vec::new();
                    r.array(|r| {
                        list.push(r.listener()?);
                        Some(())
                    })?;
                    listeners = Some(list);
                }
                "routes" if routes.is_none() => {
                    let mut list = Vec::new();
                    r.array(|r| {
                        list.push(r.route()?);
                        Some(())
                    })?;
                    routes = Some(list);
                }
                _ => return None,
            }
            Some(())
        })?;
        let header = Header {
            version,
            allow_empty: allow_empty.unwrap_or(false),
            allow_drop: allow_drop.unwrap_or(false),
            listeners: listeners.unwrap_or_default(),
        };
        Some((header, routes.unwrap_or_default()))
    }

    fn route(&mut self) -> Option<S::Route> {
        let mut sni = None;
        let mut endpoints = false;
        let mut connect_timeout_ms = None;
        let mut lb_policy = None;
        let mut keepalive = None;
        self.object(|r, key| {
            match key {
                "sni" if sni.is_none() => sni = Some(r.string()?),
                "endpoints" if !endpoints => {
                    r.array(|r| {
                        let endpoint = r.endpoint()?;
                        r.sink.endpoint(endpoint);
                        Some(())
                    })?;
                    endpoints = true;
                }
                "connect_timeout_ms" if connect_timeout_ms.is_none() => {
                    connect_timeout_ms = Some(r.integer()?);
                }
                "keepalive" if keepalive.is_none() => keepalive = Some(r.keepalive()?),
                "lb_policy" if lb_policy.is_none() => {
                    lb_policy = Some(match r.string()? {
                        "round_robin" => LbPolicy::RoundRobin,
                        "least_request" => LbPolicy::LeastRequest,
                        "random" => LbPolicy::Random,
                        _ => return None,
                    });
                }
                _ => return None,
            }
            Some(())
        })?;
        // `endpoints` is required, like `sni`.
        endpoints.then_some(())?;
        Some(
            self.sink
                .route(sni?, connect_timeout_ms, lb_policy, keepalive),
        )
    }

    fn endpoint(&mut self) -> Option<Endpoint<'a>> {
        if self.peek()? == b'"' {
            let address = self.string()?;
            return Some(Endpoint {
                address,
                weight: None,
                healthy: None,
                table: false,
            });
        }
        let mut address = None;
        let mut weight = None;
        let mut healthy = None;
        self.object(|r, key| {
            match key {
                "address" if address.is_none() => address = Some(r.string()?),
                "weight" if weight.is_none() => weight = Some(u32::try_from(r.integer()?).ok()?),
                "healthy" if healthy.is_none() => healthy = Some(r.boolean()?),
                _ => return None,
            }
            Some(())
        })?;
        Some(Endpoint {
            address: address?,
            weight,
            healthy,
            table: true,
        })
    }

    /// `{"time_secs": N, "interval_secs": N, "probes": N}`, each optional.
    fn keepalive(&mut self) -> Option<KeepaliveSpec> {
        let mut k = KeepaliveSpec::default();
        let mut seen = [false; 3];
        self.object(|r, key| {
            let (slot, i) = match key {
                "time_secs" => (&mut k.time_secs, 0),
                "interval_secs" => (&mut k.interval_secs, 1),
                "probes" => (&mut k.probes, 2),
                _ => return None,
            };
            if std::mem::replace(&mut seen[i], true) {
                return None;
            }
            *slot = Some(u32::try_from(r.integer()?).ok()?);
            Some(())
        })?;
        Some(k)
    }

    /// `{"name": "...", "address": "..."}`, both required.
    fn listener(&mut self) -> Option<ListenerSpec> {
        let mut name = None;
        let mut address = None;
        self.object(|r, key| {
            match key {
                "name" if name.is_none() => name = Some(r.string()?),
                "address" if address.is_none() => address = Some(r.string()?),
                _ => return None,
            }
            Some(())
        })?;
        Some(ListenerSpec {
            name: name?.to_owned(),
            address: address?.to_owned(),
        })
    }

    /// `{ "key": value, ... }`, at its `{`; `member` reads each value, from
    /// its first byte.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            member(self, key)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// `[ value, ... ]`, at its `[`; `element` reads each value, from its
    /// first byte.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            element(self)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string without escapes, at its opening quote.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut at = start;
        // 8 bytes at a time up to a quote, backslash or control character.
        while at + 8 <= bytes.len() {
            let word = load(bytes, at);
            let stop = bytes_equal(word, b'"') | bytes_equal(word, b'\\') | control_bytes(word);
            if stop != 0 {
                at += stop.trailing_zeros() as usize / 8;
                break;
            }
            at += 8;
        }
        loop {
            match *bytes.get(at)? {
                b'"' => break,
                // An escape (serde_json decodes it), or an error.
                b'\\' | 0..=0x1f => return None,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        // Quotes are ASCII, so both ends are char boundaries.
        self.text.get(start..at)
    }

    /// An unsigned integer as JSON writes it: digits, no leading zero.
    fn integer(&mut self) -> Option<u64> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&byte) = bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && bytes[start] == b'0') {
            return None;
        }
        // A fraction or an exponent: a float to serde.
        match bytes.get(self.at) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(value),
        }
    }

    /// `true` or `false`.
    fn boolean(&mut self) -> Option<bool> {
        let rest = self.text.get(self.at..)?;
        let (value, len) = if rest.starts_with("true") {
            (true, 4)
        } else if rest.starts_with("false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    /// Skips JSON whitespace. Most of it is a space after a colon, or a
    /// newline and indentation; indentation is skipped 8 bytes at a time.
    #[inline]
    fn whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        let mut at = self.at;
        while let Some(&byte) = bytes.get(at) {
            match byte {
                b' ' | b'\r' | b'\t' => at += 1,
                b'\n' => {
                    at += 1;
                    while at + 8 <= bytes.len() {
                        let others = !bytes_equal(load(bytes, at), b' ') & HIGH;
                        if others != 0 {
                            at += others.trailing_zeros() as usize / 8;
                            break;
                        }
                        at += 8;
                    }
                }
                _ => break,
            }
        }
        self.at = at;
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Format;

    /// The fast reader must give serde_json's snapshot or give up; whether
    /// it read `text`. Where it reads, validating as it reads must give
    /// what building serde_json's snapshot gives: the same routes, or the
    /// same first error.
    fn agree(text: &str) -> bool {
        let serde = serde_json::from_str::<snapshot::Snapshot>(text);
        let validated = parse_routes(text);
        match parse_owned(text) {
            Some(fast) => {
                let serde = serde.unwrap_or_else(|e| panic!("fast read {text:?}, serde: {e}"));
                assert_eq!(fast, serde, "{text}");
                assert!(validated.is_some(), "both sinks read the same texts");
                assert_eq!(
                    table::Table::parse(text, Format::Json),
                    table::Table::build(&serde),
                    "{text}"
                );
                true
            }
            None => {
                assert!(validated.is_none(), "{text}");
                false
            }
        }
    }

    #[test]
    fn reads_what_the_agent_writes() {
        let example = include_str!("../testdata/example.json");
        let snapshot = snapshot::Snapshot::parse(example, Format::Json).unwrap();
        let pretty = snapshot.to_json();
        let compact = serde_json::to_string(&snapshot).unwrap();
        for text in [&pretty, &compact, example] {
            assert!(agree(text), "{text}");
        }
        for text in [
            "{}",
            " {} \n",
            r#"{"routes": []}"#,
            r#"{"version": 0}"#,
            "{\t\"version\"\r\n:18446744073709551615}",
            r#"{"routes": [{"endpoints": ["x", {"address": "y"}], "sni": "a"}]}"#,
            r#"{"routes": [{"sni": "a", "endpoints": [{"weight": 2, "address": "y"}]}]}"#,
            r#"{"version": 3, "allow_empty": true, "routes": []}"#,
            r#"{"allow_drop": false, "allow_empty": false}"#,
            r#"{"allow_drop": true, "version": 1}"#,
            r#"{"listeners": [{"name": "default", "address": "10.0.0.5:8443"}, {"address": "[::]:443", "name": "wan"}], "routes": []}"#,
            r#"{"listeners": [], "routes": [{"sni": "a", "endpoints": [{"address": "10.0.0.1:1", "healthy": false}, {"address": "10.0.0.2:1", "weight": 2, "healthy": true}], "keepalive": {"time_secs": 60, "probes": 3}}]}"#,
            r#"{"routes": [{"sni": "a", "endpoints": ["10.0.0.1:1"], "keepalive": {}}]}"#,
            r#"{"routes": [{"sni": "a", "endpoints": ["10.0.0.1:1"], "keepalive": {"time_secs": 0, "interval_secs": 99999}}]}"#,
        ] {
            assert!(agree(text), "{text}");
        }
        let snapshot = parse_owned(r#"{"allow_empty": true, "allow_drop": true}"#).unwrap();
        assert!(snapshot.allow_empty && snapshot.allow_drop);
        // What the fast reader leaves to serde (and serde refuses or reads).
        for text in [
            r#"{"allow_empty": 1}"#,
            r#"{"allow_empty": tru}"#,
            r#"{"allow_drop": true, "allow_drop": true}"#,
            r#"{"listeners": [{"name": "a"}]}"#,
            r#"{"listeners": [{"name": "a", "address": "x", "port": 1}]}"#,
            r#"{"routes": [{"sni": "a", "endpoints": ["10.0.0.1:1"], "keepalive": {"probes": 1, "probes": 2}}]}"#,
            r#"{"routes": [{"sni": "a", "endpoints": [{"address": "10.0.0.1:1", "healthy": 0}]}]}"#,
        ] {
            assert!(!agree(text), "{text}");
        }
    }

    #[test]
    fn gives_up_on_the_rest() {
        for text in [
            "",
            "[]",
            "null",
            "{",
            "{}}",
            "{} x",
            r#"{"version": null}"#,
            r#"{"version": -1}"#,
            r#"{"version": 1.0}"#,
            r#"{"version": 1e3}"#,
            r#"{"version": 01}"#,
            r#"{"version": 18446744073709551616}"#,
            r#"{"version": 1, "version": 2}"#,
            r#"{"routes": [], "routes": []}"#,
            r#"{"routez": []}"#,
            r#"{"routes": [{"sni": "a.b"}]}"#,
            r#"{"routes": [{"endpoints": []}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": [], "sni": "c"}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": ["x"], "endpoints": ["y"]}]}"#,
            r#"{"routes": [{"sni": "a\u0041", "endpoints": []}]}"#,
            r#"{"routes": [{"sni": "a\nb", "endpoints": []}]}"#,
            "{\"routes\": [{\"sni\": \"a\u{1}b\", \"endpoints\": []}]}",
            r#"{"routes": [{"sni": "a.b", "endpoints": [7]}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": [{"address": "x", "weight": 4294967296}]}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": [{"weight": 1}]}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": [{"address": "x", "wieght": 1}]}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": ["x"], "lb_policy": "maglev"}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": ["x"],}]}"#,
            r#"{"routes": [{"sni": "a.b", "endpoints": ["x",]}]}"#,
            r#"{"routes": [["a.b", ["x"]]]}"#,
            "{\"routes\"\u{b}: []}",
        ] {
            assert!(!agree(text), "{text}");
        }
    }

    #[test]
    fn every_prefix_and_one_byte_change_agrees() {
        // Cut or corrupt a small snapshot at every byte: the reader must
        // give serde_json's answer or give up, never a different one.
        let text = r#"{"version": 7, "routes": [{"sni": "*.dc2.x", "endpoints": ["10.0.0.1:1", {"address": "10.0.0.2:1", "weight": 3}], "connect_timeout_ms": 5000, "lb_policy": "least_request"}, {"sni": "b", "endpoints": []}]}"#;
        for end in 0..=text.len() {
            if let Some(prefix) = text.get(..end) {
                agree(prefix);
            }
        }
        for at in 0..text.len() {
            for byte in [
                b' ', b'"', b'\\', b'0', b'9', b',', b'}', b']', b'{', b'[', b'e', b'-', b'\n',
            ] {
                let mut changed = text.as_bytes().to_vec();
                changed[at] = byte;
                if let Ok(changed) = String::from_utf8(changed) {
                    agree(&changed);
                }
            }
        }
    }
}
