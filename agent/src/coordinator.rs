//! The one owner of the catalog view: receives every watch's answers,
//! starts and stops watches as services, subsets, datacenters and
//! partitions come and go, and rebuilds the table after a change.
//!
//! Watches are tokio tasks that send their decoded answers here over a
//! channel, tagged with a generation so that an answer from a watch that
//! has just been stopped is ignored. Nothing else touches the view, so
//! there are no locks around it.
//!
//! The first table is only written once every watch has answered at least
//! once (or `--initial-sync-timeout-ms` has passed): a partial table at
//! start would drop routes the data plane is serving. After that, a change
//! schedules a rebuild a few milliseconds later (debounce, not reset by
//! further changes, so the delay is bounded), and the writer writes only
//! when the routes differ. A rebuild waits (at most [`PENDING_GRACE`]) for
//! watches that have not answered yet: a new default subset or a changed
//! subset filter must not leave a name without endpoints in between.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use routing_table::Snapshot;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use std::net::Ipv4Addr;

use crate::blocking::{self, WatchCtx};
use crate::build::{self, CatalogView, GatewayKey, ServiceKey};
use crate::consul::CheckServiceNode;
use crate::http::HttpError;
use crate::local::Identity;
use crate::metrics::unix_now;
use crate::resolve::Resolver;
use crate::snapshot::{Offered, Writer};
use crate::watches::{norm_ns, Data, Key};

/// Longest a rebuild waits for newly started watches' first answers.
const PENDING_GRACE: Duration = Duration::from_secs(1);

/// How the coordinator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Watch forever and write the routes file.
    Serve,
    /// One answer per watch, then return the snapshot.
    Once,
}

enum Msg {
    Data {
        key: Key,
        gen: u64,
        data: Data,
    },
    Failed {
        key: Key,
        error: HttpError,
    },
    Resolved {
        name: String,
        result: Result<Vec<Ipv4Addr>, String>,
    },
}

/// Host names and the DNS domain.
#[derive(Debug, Clone)]
pub struct Naming {
    /// The DNS domain of server names (`--domain`).
    pub domain: String,
    /// Where host names are resolved.
    pub resolver: Resolver,
    /// How often each host name is resolved again.
    pub refresh: Duration,
}

struct Running {
    gen: u64,
    abort: AbortHandle,
    answered: bool,
}

/// Why the coordinator stopped without a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// `--once`: a watch kept failing.
    #[error("{watch}: {error}")]
    Unavailable {
        /// Which watch.
        watch: String,
        /// The last error.
        #[source]
        error: HttpError,
    },
}

/// The coordinator.
pub struct Coordinator {
    ctx: Arc<WatchCtx>,
    me: Identity,
    mode: RunMode,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    next_gen: u64,
    watches: HashMap<Key, Running>,
    pending: usize,
    view: CatalogView,
    catalogs: BTreeMap<String, BTreeSet<String>>,
    namespaces: BTreeSet<String>,
    partitions: BTreeSet<String>,
    datacenters: Vec<String>,
    gw_names: BTreeMap<GatewayKey, BTreeSet<String>>,
    gw_nodes: BTreeMap<(GatewayKey, String), Vec<CheckServiceNode>>,
    naming: Naming,
    host_names: watch::Sender<BTreeSet<String>>,
    failing_names: BTreeSet<String>,
    logged_settings: Option<(Vec<String>, Vec<String>)>,
    wan_federation: bool,
}

impl Coordinator {
    /// A coordinator for gateway `me`; starts no watch yet.
    pub fn new(ctx: Arc<WatchCtx>, me: Identity, mode: RunMode, naming: Naming) -> Coordinator {
        let (tx, rx) = mpsc::unbounded_channel();
        let view = CatalogView {
            datacenter: me.datacenter.clone(),
            partition: me.partition.clone(),
            domain: naming.domain.clone(),
            ..CatalogView::default()
        };
        Coordinator {
            ctx,
            me,
            mode,
            tx,
            rx,
            next_gen: 0,
            watches: HashMap::new(),
            pending: 0,
            view,
            catalogs: BTreeMap::new(),
            namespaces: BTreeSet::new(),
            partitions: BTreeSet::new(),
            datacenters: Vec::new(),
            gw_names: BTreeMap::new(),
            gw_nodes: BTreeMap::new(),
            naming,
            host_names: watch::channel(BTreeSet::new()).0,
            failing_names: BTreeSet::new(),
            logged_settings: None,
            wan_federation: false,
        }
    }

    fn start_core(&mut self) {
        self.start(Key::Own);
        self.start(Key::Roots);
        self.start(Key::Resolvers);
        if self.me.enterprise {
            self.start(Key::Namespaces);
            self.start(Key::Partitions);
        } else {
            self.start(Key::Catalog(String::new()));
        }
        if self.me.in_default_partition() {
            self.start(Key::Datacenters);
        }
        self.sync_peering();
    }

    /// `--once`: one answer from every watch, then the snapshot (without a
    /// version).
    ///
    /// # Errors
    /// A watch that failed all its attempts.
    pub async fn once(mut self) -> Result<Snapshot, RunError> {
        self.start_core();
        while self.pending > 0 {
            let Some(msg) = self.rx.recv().await else {
                break;
            };
            if let Some(e) = self.handle(msg) {
                self.abort_all();
                return Err(e);
            }
        }
        self.abort_all();
        // Host names: one lookup each, then the table with their addresses.
        let Some(first) = build::build(&self.view) else {
            return Ok(Snapshot::default());
        };
        for name in first.host_names {
            if let Ok(addrs) = self.naming.resolver.lookup_v4(&name).await {
                self.view.resolved.insert(name, addrs);
            } else {
                tracing::warn!(host = %name, "host name does not resolve; its endpoints are left out");
            }
        }
        Ok(build::build(&self.view)
            .map(|b| b.snapshot)
            .unwrap_or_default())
    }

    /// Watches until `stop` turns true, writing through `writer`.
    pub async fn serve(mut self, mut writer: Writer, mut stop: watch::Receiver<bool>) {
        let t = self.ctx.timing;
        self.start_core();
        let resolver = tokio::spawn(resolve_names(
            self.naming.resolver,
            self.naming.refresh,
            self.host_names.subscribe(),
            self.tx.clone(),
        ));
        let metrics = self.ctx.metrics.clone();
        metrics
            .snapshot_version
            .store(writer.version(), Ordering::Relaxed);
        let sync_deadline = Instant::now() + t.initial_sync_timeout;
        let mut synced = false;
        let mut dirty = false;
        // Peering watches hold the first table back for PENDING_GRACE at
        // most (a token without peering:read never gets their answers);
        // the timer makes sure that moment is noticed.
        let peering_grace = Instant::now() + PENDING_GRACE;
        let mut flush_at: Option<Instant> = Some(peering_grace);
        let mut failing_write = false;
        let mut deferred_since: Option<Instant> = None;
        loop {
            let first_sync = !synced
                && (self.pending == 0
                    || self.only_remote_pending()
                    || (Instant::now() >= peering_grace && self.only_peering_pending()));
            if first_sync {
                synced = true;
                dirty = true;
                flush_at = Some(Instant::now());
                tracing::info!(watches = self.watches.len(), "initial sync complete");
            }
            let flush_timer = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let sync_timer = async {
                if synced {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep_until(sync_deadline).await;
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Drain what is already queued before deciding.
                    while let Ok(msg) = self.rx.try_recv() {
                        self.handle(msg);
                    }
                    dirty = true;
                    if flush_at.is_none() {
                        flush_at = Some(Instant::now() + t.debounce);
                    }
                }
                () = flush_timer => {
                    flush_at = None;
                    if !(synced || Instant::now() >= sync_deadline) {
                        continue;
                    }
                    if !dirty {
                        continue;
                    }
                    if synced && self.pending > 0 {
                        let since = *deferred_since.get_or_insert_with(Instant::now);
                        if since.elapsed() < PENDING_GRACE {
                            flush_at = Some(Instant::now() + t.debounce.max(Duration::from_millis(1)));
                            continue;
                        }
                        tracing::debug!(pending = self.pending, "rebuilding without the watches still pending");
                    }
                    deferred_since = None;
                    dirty = false;
                    match self.flush(&mut writer) {
                        Ok(()) => failing_write = false,
                        Err(e) => {
                            metrics.snapshot_write_errors.fetch_add(1, Ordering::Relaxed);
                            if !failing_write {
                                tracing::error!(error = %e, "cannot write the routes file; the data plane keeps its table; retrying");
                            }
                            failing_write = true;
                            dirty = true;
                            flush_at = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                () = sync_timer => {
                    synced = true;
                    let missing: Vec<String> = self
                        .watches
                        .iter()
                        .filter(|(_, r)| !r.answered)
                        .map(|(k, _)| k.name())
                        .take(10)
                        .collect();
                    tracing::warn!(
                        pending = self.pending,
                        first = ?missing,
                        "initial sync incomplete after --initial-sync-timeout-ms; writing what is known"
                    );
                    dirty = true;
                    flush_at = Some(Instant::now());
                }
                _ = stop.changed() => break,
            }
        }
        resolver.abort();
        self.abort_all();
    }

    /// With the federation states read, the only watches still unanswered
    /// ask other datacenters (which, federated through gateways, answer
    /// only once the gateways route): the first table need not wait.
    fn only_remote_pending(&self) -> bool {
        let fed_answered = self
            .watches
            .get(&Key::FederationStates)
            .is_some_and(|r| r.answered);
        fed_answered
            && self.watches.iter().all(|(k, r)| {
                r.answered
                    || match k {
                        Key::GatewayCatalog(g) | Key::GatewayHealth(g, _) => {
                            g.datacenter != self.me.datacenter
                        }
                        _ => false,
                    }
            })
    }

    /// Only peering watches are unanswered (logged when true).
    fn only_peering_pending(&self) -> bool {
        let mut waiting = Vec::new();
        for (k, r) in &self.watches {
            match k {
                _ if r.answered => {}
                Key::Peering(_) => waiting.push(k.name()),
                _ => return false,
            }
        }
        tracing::warn!(
            watches = ?waiting,
            "peering watches have not answered; the first table goes without them (the token needs peering:read and mesh:read, and peering must be enabled)"
        );
        true
    }

    /// Builds and offers the table; marks the agent ready.
    fn flush(&mut self, writer: &mut Writer) -> Result<(), crate::snapshot::WriteError> {
        let Some(built) = build::build(&self.view) else {
            tracing::debug!("no trust domain yet; nothing to write");
            return Ok(());
        };
        self.note_settings(&built.settings);
        let refused = crate::peering::unservable(&self.view);
        crate::peering::report(&mut self.view.peering.reported, &refused, &self.ctx.metrics);
        let names = built.host_names;
        self.view.resolved.retain(|n, _| names.contains(n));
        self.failing_names.retain(|n| names.contains(n));
        self.host_names.send_if_modified(|held| {
            if *held == names {
                return false;
            }
            held.clone_from(&names);
            true
        });
        let snapshot = built.snapshot;
        let metrics = &self.ctx.metrics;
        let routes = snapshot.routes.len();
        let offered = tokio::task::block_in_place(|| writer.offer(&snapshot))?;
        metrics.routes.store(routes as u64, Ordering::Relaxed);
        if let Offered::Written(v) = offered {
            metrics.snapshot_version.store(v, Ordering::Relaxed);
            metrics.snapshot_writes.fetch_add(1, Ordering::Relaxed);
            metrics
                .snapshot_written_unix
                .store(unix_now(), Ordering::Relaxed);
            tracing::info!(version = v, routes, "routes written");
        }
        if !metrics.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(
                version = writer.version(),
                routes,
                written = matches!(offered, Offered::Written(_)),
                "first table in place"
            );
        }
        Ok(())
    }

    fn abort_all(&mut self) {
        for (_, r) in self.watches.drain() {
            r.abort.abort();
        }
        self.pending = 0;
    }

    fn start(&mut self, key: Key) {
        if self.watches.contains_key(&key) {
            return;
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let spec = key.spec(&self.me, &self.ctx.timing, self.mode == RunMode::Once);
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let (k1, k2, k3) = (key.clone(), key.clone(), key.clone());
        let task = tokio::spawn(async move {
            let result = blocking::run(
                ctx,
                spec,
                move |body| k1.decode(body),
                |data| {
                    tx.send(Msg::Data {
                        key: k2.clone(),
                        gen,
                        data,
                    })
                    .is_ok()
                },
            )
            .await;
            if let Err(error) = result {
                let _ = tx.send(Msg::Failed { key: k3, error });
            }
        });
        tracing::debug!(watch = %key.name(), "watch started");
        self.watches.insert(
            key,
            Running {
                gen,
                abort: task.abort_handle(),
                answered: false,
            },
        );
        self.pending += 1;
    }

    fn stop(&mut self, key: &Key) {
        let Some(r) = self.watches.remove(key) else {
            return;
        };
        r.abort.abort();
        if !r.answered {
            self.pending -= 1;
        }
        tracing::debug!(watch = %key.name(), "watch stopped");
        match key {
            Key::Health(s) => {
                self.view.services.remove(s);
            }
            Key::Subset {
                service, subset, ..
            } => {
                self.view.subsets.remove(&(service.clone(), subset.clone()));
            }
            Key::Catalog(ns) => {
                self.catalogs.remove(ns);
                let ns = norm_ns(ns);
                self.sync(
                    |k| matches!(k, Key::Health(s) if s.namespace == ns),
                    BTreeSet::new(),
                );
                self.sync_subsets();
            }
            Key::GatewayCatalog(g) => {
                self.gw_names.remove(g);
                let g = g.clone();
                self.sync(
                    |k| matches!(k, Key::GatewayHealth(h, _) if *h == g),
                    BTreeSet::new(),
                );
                self.view.gateways.remove(&g);
            }
            Key::GatewayHealth(g, name) => {
                self.gw_nodes.remove(&(g.clone(), name.clone()));
                self.refresh_gateways(g);
            }
            Key::Servers => self.view.servers.clear(),
            Key::FederationStates => self.view.federation_states.clear(),
            Key::Peering(w) => self.view.peering.forget(w),
            _ => {}
        }
    }

    /// Stops the running keys selected by `mine` that are not in `desired`,
    /// starts those of `desired` not running.
    fn sync(&mut self, mine: impl Fn(&Key) -> bool, desired: BTreeSet<Key>) {
        let stale: Vec<Key> = self
            .watches
            .keys()
            .filter(|k| mine(k) && !desired.contains(*k))
            .cloned()
            .collect();
        for k in stale {
            self.stop(&k);
        }
        for k in desired {
            self.start(k);
        }
    }

    /// Handles one message; `Some` when `--once` must give up.
    fn handle(&mut self, msg: Msg) -> Option<RunError> {
        let (key, gen, data) = match msg {
            Msg::Data { key, gen, data } => (key, gen, data),
            // `--once`: a peering watch that keeps failing leaves peering
            // routes out, not the whole table.
            Msg::Failed {
                key: key @ Key::Peering(_),
                error,
            } => {
                tracing::warn!(watch = %key.name(), %error, "peering watch failed; peering routes left out (the token needs peering:read and mesh:read, and peering must be enabled)");
                if let Some(r) = self.watches.get_mut(&key) {
                    if !r.answered {
                        r.answered = true;
                        self.pending -= 1;
                    }
                }
                return None;
            }
            Msg::Failed { key, error } => {
                return Some(RunError::Unavailable {
                    watch: key.name(),
                    error,
                })
            }
            Msg::Resolved { name, result } => {
                self.resolved(name, result);
                return None;
            }
        };
        match self.watches.get_mut(&key) {
            Some(r) if r.gen == gen => {
                if !r.answered {
                    r.answered = true;
                    // Children start below before this one counts as answered.
                    self.apply(&key, data);
                    self.pending -= 1;
                    return None;
                }
            }
            _ => return None,
        }
        self.apply(&key, data);
        None
    }

    fn apply(&mut self, key: &Key, data: Data) {
        match (key, data) {
            (Key::Roots, Data::Roots(roots)) => {
                let td = roots.trust_domain;
                if !self.view.trust_domain.is_empty() && self.view.trust_domain != td {
                    tracing::info!(from = %self.view.trust_domain, to = %td, "trust domain changed; renaming every route");
                }
                self.view.trust_domain = td;
            }
            (Key::Namespaces, Data::Names(names)) => {
                self.namespaces = names;
                let desired = self
                    .namespaces
                    .iter()
                    .map(|n| Key::Catalog(n.clone()))
                    .collect();
                self.sync(|k| matches!(k, Key::Catalog(_)), desired);
            }
            (Key::Partitions, Data::Names(names)) => {
                self.partitions = names;
                self.sync_gateway_catalogs();
            }
            (Key::Datacenters, Data::Datacenters(dcs)) => {
                if dcs != self.datacenters {
                    tracing::info!(datacenters = ?dcs, "datacenters");
                }
                self.datacenters = dcs;
                self.sync_gateway_catalogs();
            }
            (Key::Catalog(ns), Data::Names(names)) => {
                let sk_ns = norm_ns(ns);
                let desired = names
                    .iter()
                    .map(|n| {
                        Key::Health(ServiceKey {
                            namespace: sk_ns.clone(),
                            name: n.clone(),
                        })
                    })
                    .collect();
                self.catalogs.insert(ns.clone(), names);
                self.sync(
                    |k| matches!(k, Key::Health(s) if s.namespace == sk_ns),
                    desired,
                );
                self.sync_subsets();
            }
            (Key::Health(s), Data::Nodes(nodes)) => {
                self.view.services.insert(s.clone(), nodes);
            }
            (Key::Resolvers, Data::Resolvers(list)) => {
                self.view.resolvers = list
                    .into_iter()
                    .map(|r| {
                        (
                            ServiceKey {
                                namespace: norm_ns(&r.namespace),
                                name: r.name.clone(),
                            },
                            r,
                        )
                    })
                    .collect();
                self.sync_subsets();
            }
            (
                Key::Subset {
                    service, subset, ..
                },
                Data::Nodes(nodes),
            ) => {
                self.view
                    .subsets
                    .insert((service.clone(), subset.clone()), nodes);
            }
            (Key::GatewayCatalog(g), Data::Names(names)) => {
                let desired = names
                    .iter()
                    .map(|n| Key::GatewayHealth(g.clone(), n.clone()))
                    .collect();
                self.gw_names.insert(g.clone(), names);
                let g2 = g.clone();
                self.sync(
                    |k| matches!(k, Key::GatewayHealth(h, _) if *h == g2),
                    desired,
                );
                self.refresh_gateways(g);
            }
            (Key::GatewayHealth(g, name), Data::Nodes(nodes)) => {
                let nodes = nodes
                    .into_iter()
                    .filter(|n| n.service.kind == "mesh-gateway")
                    .collect();
                self.gw_nodes.insert((g.clone(), name.clone()), nodes);
                self.refresh_gateways(g);
            }
            (Key::Own, Data::Nodes(nodes)) => {
                if nodes.len() > 1 {
                    tracing::warn!(
                        service_id = %self.me.service_id,
                        instances = nodes.len(),
                        "several registrations with the gateway's service ID; using the first (set --proxy-id)"
                    );
                }
                let own = nodes.into_iter().next();
                if own.is_none() && self.view.own.is_some() {
                    tracing::info!(service_id = %self.me.service_id, "the gateway's registration is gone; its settings are the defaults");
                }
                self.view.own = own;
                self.sync_federation();
            }
            (Key::Servers, Data::Nodes(nodes)) => self.view.servers = nodes,
            (Key::FederationStates, Data::Federation(map)) => {
                self.view.federation_states = map
                    .into_iter()
                    .map(|(dc, nodes)| {
                        let nodes = nodes
                            .into_iter()
                            .filter(|n| n.service.kind == "mesh-gateway")
                            .collect();
                        (dc, nodes)
                    })
                    .collect();
            }
            (Key::Peering(w), Data::Peering(answer)) => {
                self.view.peering.apply(w, answer);
                self.sync_peering();
            }
            (key, _) => {
                tracing::error!(watch = %key.name(), "answer of an unexpected shape; ignored")
            }
        }
    }

    /// WAN federation (the registration's meta, default partition only):
    /// the servers and the federation states are watched while it is on.
    fn sync_federation(&mut self) {
        let on = self.me.in_default_partition()
            && self.view.own.as_ref().is_some_and(|o| {
                o.service
                    .meta
                    .get(crate::settings::WAN_FEDERATION_META)
                    .is_some_and(|v| v == "1")
            });
        if on != self.wan_federation {
            tracing::info!(
                enabled = on,
                "WAN federation through the gateway (meta consul-wan-federation)"
            );
            self.wan_federation = on;
        }
        let mut desired = BTreeSet::new();
        if on {
            desired.insert(Key::FederationStates);
        }
        if on || self.view.peering.through_gateways(&self.me.partition) {
            desired.insert(Key::Servers);
        }
        self.sync(
            |k| matches!(k, Key::Servers | Key::FederationStates),
            desired,
        );
    }

    /// The peering watches follow the peerings and their imports.
    fn sync_peering(&mut self) {
        let desired = self
            .view
            .peering
            .desired()
            .into_iter()
            .map(Key::Peering)
            .collect();
        self.sync(|k| matches!(k, Key::Peering(_)), desired);
        self.sync_federation();
    }

    /// One log line when the registration's unimplemented options or
    /// unreadable values change (and so once at start).
    fn note_settings(&mut self, s: &crate::settings::GatewaySettings) {
        let notes = (s.unimplemented.clone(), s.problems.clone());
        if self.logged_settings.as_ref() == Some(&notes) {
            return;
        }
        if !notes.0.is_empty() {
            tracing::warn!(
                options = ?notes.0,
                "Proxy.Config options of the gateway's registration that meshgate does not implement; ignored"
            );
        }
        if !notes.1.is_empty() {
            tracing::warn!(
                problems = ?notes.1,
                "Proxy.Config values of the gateway's registration that do not parse; defaults used"
            );
        }
        self.logged_settings = Some(notes);
    }

    /// A lookup result: new addresses replace the old; a failure keeps the
    /// last good ones, with one log line until the name resolves again.
    fn resolved(&mut self, name: String, result: Result<Vec<Ipv4Addr>, String>) {
        if !self.host_names.borrow().contains(&name) {
            return;
        }
        match result {
            Ok(addrs) => {
                if self.failing_names.remove(&name) {
                    tracing::info!(host = %name, addresses = ?addrs, "host name resolves again");
                }
                if self.view.resolved.get(&name) != Some(&addrs) {
                    tracing::info!(host = %name, addresses = ?addrs, "host name resolved");
                    self.view.resolved.insert(name, addrs);
                }
            }
            Err(error) => {
                if self.failing_names.insert(name.clone()) {
                    match self.view.resolved.get(&name) {
                        Some(last) => {
                            tracing::warn!(host = %name, %error, keeping = ?last, "host name does not resolve; keeping its last addresses")
                        }
                        None => {
                            tracing::warn!(host = %name, %error, "host name does not resolve; its endpoints wait for it")
                        }
                    }
                }
            }
        }
    }

    /// Subset watches follow the resolvers and the services present.
    fn sync_subsets(&mut self) {
        let mut desired = BTreeSet::new();
        for (service, r) in &self.view.resolvers {
            if !self.watches.contains_key(&Key::Health(service.clone())) {
                continue;
            }
            for (name, subset) in &r.subsets {
                desired.insert(Key::Subset {
                    service: service.clone(),
                    subset: name.clone(),
                    filter: subset.filter.clone(),
                });
            }
        }
        self.sync(|k| matches!(k, Key::Subset { .. }), desired);
    }

    /// One gateway-catalog watch per other datacenter (from the default
    /// partition only, as Consul) and per other partition here (Enterprise).
    fn sync_gateway_catalogs(&mut self) {
        let mut desired = BTreeSet::new();
        if self.me.in_default_partition() {
            for dc in &self.datacenters {
                if *dc != self.me.datacenter {
                    desired.insert(Key::GatewayCatalog(GatewayKey {
                        datacenter: dc.clone(),
                        partition: String::new(),
                    }));
                }
            }
        }
        if self.me.enterprise {
            let mine = if self.me.partition.is_empty() {
                "default"
            } else {
                self.me.partition.as_str()
            };
            for p in &self.partitions {
                if p != mine {
                    desired.insert(Key::GatewayCatalog(GatewayKey {
                        datacenter: self.me.datacenter.clone(),
                        partition: p.clone(),
                    }));
                }
            }
        }
        self.sync(|k| matches!(k, Key::GatewayCatalog(_)), desired);
    }

    fn refresh_gateways(&mut self, g: &GatewayKey) {
        let nodes: Vec<CheckServiceNode> = self
            .gw_nodes
            .range((g.clone(), String::new())..)
            .take_while(|((k, _), _)| k == g)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        if nodes.is_empty() {
            self.view.gateways.remove(g);
        } else {
            self.view.gateways.insert(g.clone(), nodes);
        }
    }
}

/// Resolves every host name in `names` at once when it appears, then every
/// `refresh`, sending each result to the coordinator.
async fn resolve_names(
    resolver: Resolver,
    refresh: Duration,
    mut names: watch::Receiver<BTreeSet<String>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let current = names.borrow_and_update().clone();
        due.retain(|n, _| current.contains(n));
        let now = Instant::now();
        for name in &current {
            if due.get(name).is_some_and(|&at| at > now) {
                continue;
            }
            let result = resolver.lookup_v4(name).await.map_err(|e| e.to_string());
            due.insert(name.clone(), Instant::now() + refresh);
            let msg = Msg::Resolved {
                name: name.clone(),
                result,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let next = due.values().min().copied();
        tokio::select! {
            changed = names.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}
