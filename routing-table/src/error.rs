//! Errors of this crate: one [`SnapshotError`] for everything that can be wrong
//! with a routes file or snapshot, with the details in [`RouteProblem`] and
//! [`NameError`].
//!
//! Every `Display` is a single line that names the route index, its `sni` and
//! the offending field, so `meshgate check` and the agent can print it as is.
//! Untrusted strings are printed with `{:?}` so a newline in a routes file
//! cannot split the line.

use std::net::IpAddr;

use crate::snapshot::Format;

/// Why a routes file or snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The text is not valid TOML/JSON, or does not fit the schema (unknown
    /// field, wrong type, unknown `lb_policy`, ...). `message` is the
    /// deserializer's message, including its line and column.
    #[error("invalid {format} routes: {message}")]
    Syntax {
        /// The format the text was parsed as.
        format: Format,
        /// The deserializer's message (one line, with line and column).
        message: String,
    },
    /// One field of one route is invalid.
    #[error("routes[{index}] (sni {sni:?}): {field}: {problem}")]
    Route {
        /// Index of the route in `routes`.
        index: usize,
        /// The route's `sni` as written in the file.
        sni: String,
        /// Path of the offending field inside the route, e.g. `endpoints[1].address`.
        field: String,
        /// What is wrong with it.
        problem: RouteProblem,
    },
    /// Two routes have the same `sni` after normalization (lower-case, no
    /// trailing dot).
    #[error("routes[{second}] (sni {sni:?}): sni: duplicates routes[{first}]")]
    Duplicate {
        /// Index of the earlier route.
        first: usize,
        /// Index of the later route, the one refused.
        second: usize,
        /// The normalized pattern both routes share.
        sni: String,
    },
    /// A snapshot's version is lower than the version of the table it would replace.
    #[error("snapshot version {offered} is older than the current version {current}")]
    VersionRegressed {
        /// Version of the table in use.
        current: u64,
        /// Version of the refused snapshot.
        offered: u64,
    },
    /// One field of one of the gateway's `listeners` is invalid.
    #[error("listeners[{index}] (name {name:?}): {field}: {problem}")]
    Listener {
        /// Index in `listeners`.
        index: usize,
        /// Its `name` as written.
        name: String,
        /// `name` or `address`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The text is empty (or only whitespace): a file caught half-written,
    /// or truncated, never a table.
    #[error("the {format} routes file is empty (no version, no routes)")]
    EmptyText {
        /// The format the text was to be parsed as.
        format: Format,
    },
    /// The file has no routes and does not say `allow_empty = true`.
    #[error(
        "routes: none; a table with no routes refuses every connection: \
         set allow_empty = true in the file to serve none on purpose"
    )]
    NoRoutes,
    /// The file has no `version` but the table in use has one.
    #[error(
        "version: missing, and the table in use has version {current}: \
         a file without a version cannot replace a versioned table"
    )]
    VersionMissing {
        /// Version of the table in use.
        current: u64,
    },
    /// The file keeps fewer than half of the routes of the table in use
    /// and does not say `allow_drop = true`.
    #[error(
        "routes: {offered} routes would replace {current}, removing more than half \
         at once: set allow_drop = true in the file to do that on purpose"
    )]
    DropsMost {
        /// Routes in the table in use.
        current: usize,
        /// Routes in the refused file.
        offered: usize,
    },
    /// More routes than one table holds: at most
    /// [`MAX_ROUTES`](crate::MAX_ROUTES), and the index keeps at most 4 GiB
    /// of long names that share no suffix (then `max` is the number of
    /// routes that fit).
    #[error("{count} routes is more than the maximum of {max}")]
    TooManyRoutes {
        /// Number of routes offered.
        count: usize,
        /// Maximum number of routes in one table.
        max: usize,
    },
}

/// What is wrong with one field of a route (see [`SnapshotError::Route`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteProblem {
    /// The `sni` is not a valid name or `*.` pattern.
    #[error("invalid name: {0}")]
    InvalidName(#[source] NameError),
    /// The route has no endpoints.
    #[error("at least one endpoint is required")]
    NoEndpoints,
    /// The address is not an `IP:port` literal (hostnames are not resolved here).
    #[error("{value:?} is not an IP:port literal such as \"10.0.0.1:8443\" or \"[::1]:8443\"")]
    NotIpPort {
        /// The address as written.
        value: String,
    },
    /// The port is 0.
    #[error("port 0 is not allowed")]
    PortZero,
    /// The IP is `0.0.0.0` or `::`.
    #[error("unspecified address {ip} is not allowed")]
    Unspecified {
        /// The offending IP.
        ip: IpAddr,
    },
    /// The IP is a multicast address.
    #[error("multicast address {ip} is not allowed")]
    Multicast {
        /// The offending IP.
        ip: IpAddr,
    },
    /// The same socket address appears twice in one route.
    #[error("duplicates endpoints[{first}]")]
    DuplicateEndpoint {
        /// Index of the earlier, identical endpoint.
        first: usize,
    },
    /// The weight is 0 or above [`MAX_WEIGHT`](crate::MAX_WEIGHT).
    #[error("weight {weight} is out of range 1..={max}")]
    Weight {
        /// The offending weight.
        weight: u32,
        /// The largest weight allowed.
        max: u32,
    },
    /// The connect timeout is 0 or above [`MAX_CONNECT_TIMEOUT_MS`](crate::MAX_CONNECT_TIMEOUT_MS).
    #[error("{ms} ms is out of range 1..={max}")]
    ConnectTimeout {
        /// The offending timeout in milliseconds.
        ms: u64,
        /// The largest timeout allowed, in milliseconds.
        max: u64,
    },
    /// A number outside its range (a keepalive setting).
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        /// The offending value.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
}

/// Why a DNS name or `*.` pattern is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty (or is only a dot).
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
    #[error("name is {len} bytes long, more than {max}")]
    TooLong {
        /// Length in bytes, without the trailing dot.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// Two dots in a row, or a leading dot.
    #[error("empty label at byte {offset}")]
    EmptyLabel {
        /// Byte offset of the empty label.
        offset: usize,
    },
    /// A label is longer than [`MAX_LABEL_LEN`](crate::MAX_LABEL_LEN) bytes.
    #[error("label at byte {offset} is {len} bytes long, more than {max}")]
    LabelTooLong {
        /// Byte offset of the label.
        offset: usize,
        /// Its length.
        len: usize,
        /// The maximum label length.
        max: usize,
    },
    /// A byte outside `[A-Za-z0-9_-.]`.
    #[error("byte {byte:#04x} ({}) at offset {offset} is not allowed (only A-Z a-z 0-9 _ - .)", (*byte as char).escape_default())]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its offset in the name.
        offset: usize,
    },
    /// A `*` that is not the whole first label.
    #[error("'*' is only allowed as the whole first label (\"*.example.com\")")]
    MisplacedWildcard,
    /// A pattern that is only `*`.
    #[error("'*' must be followed by at least one label")]
    BareWildcard,
}
