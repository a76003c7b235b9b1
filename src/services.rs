//! The server's context: what every request handler is given (axum state).
//! Built once in [`crate::server`], passed explicitly, never global.

use std::sync::Arc;

use crate::{
    account_data::AccountDataStream,
    accounts::{AuthSessions, RegistrationNonces, RegistrationSessions},
    appservice::{AppServices, Registration},
    backfill::Backfiller,
    cluster::Cluster,
    config::Config,
    connections::Connections,
    devices::E2eStream,
    ephemeral::Ephemeral,
    federation_client::{FederationClient, sender::Sender},
    filter::LazyLoadCache,
    keyring::KeyRing,
    keys::ServerKeys,
    metrics::Metrics,
    presence::Presence,
    push::Push,
    rooms::{RoomLocks, guests::GuestRevocations},
    state::StateCache,
    storage::{Storage, StreamOrdering},
    wakeups::{StreamHead, Topic, Wakeups},
};

/// What a request handler or background task may use. Cluster state is in
/// `storage` (shared by every process of the server) and `cluster` (how
/// this process coordinates with the others: `crate::cluster`); every
/// other field is this process's own, and follows the others' writes
/// through `crate::cluster::follow`.
pub struct Services {
    pub config: Config,
    pub keys: Arc<ServerKeys>,
    pub storage: Arc<dyn Storage>,
    pub cluster: Arc<dyn Cluster>,
    /// Requests to other servers.
    pub federation: Arc<FederationClient>,
    /// Other servers' signing keys.
    pub keyring: KeyRing,
    /// This server's events on their way to the other servers of a room.
    pub sender: Arc<Sender>,
    /// History fetched from other servers into timelines.
    pub backfiller: Backfiller,
    /// Typing notifications and the ephemeral stream.
    pub ephemeral: Arc<Ephemeral>,
    /// Users' presence, on its own stream.
    pub presence: Arc<Presence>,
    /// The account data stream: wakes `/sync` on changes.
    pub account_data: AccountDataStream,
    /// Device list changes and to-device messages (the e2e stream).
    pub e2e: E2eStream,
    pub metrics: Metrics,
    /// Push rules, notifications and pushes to push gateways.
    pub push: Push,
    /// The registered application services, and events on their way to
    /// them.
    pub appservices: AppServices,
    pub state: StateCache,
    /// Who is joined to each room now (local users, servers).
    pub joined: Arc<crate::state::joined::JoinedCache>,
    pub rooms: RoomLocks,
    pub notifier: Notifier,
    /// Nonces handed out by `GET /_synapse/admin/v1/register`.
    pub registration_nonces: RegistrationNonces,
    /// User-interactive-auth sessions of `/register`.
    pub registration_sessions: RegistrationSessions,
    /// User-interactive-auth sessions of other operations.
    pub auth_sessions: AuthSessions,
    /// Membership events sent to each device, for lazy-loading syncs.
    pub lazy_members: LazyLoadCache,
    /// Rooms just closed to guests, whose local guests must leave.
    pub guest_revocations: GuestRevocations,
    /// Where each device was last seen from.
    pub connections: Connections,
    /// Wakes the pruning of self-destructing messages.
    pub expiries: crate::rooms::expiry::Expiries,
    /// Requests to identity servers (third-party invites).
    pub identity: crate::identity::IdentityClient,
    /// Rate limits and requests in flight (process-local).
    pub limits: Arc<crate::limits::Limits>,
    /// The resyncs of rooms joined with partial state this process runs.
    pub partial_resyncs: crate::rooms::partial_state::Resyncs,
}

impl Services {
    pub async fn new(
        config: Config,
        keys: Arc<ServerKeys>,
        (storage, cluster): (Arc<dyn Storage>, Arc<dyn Cluster>),
        federation: Arc<FederationClient>,
        appservices: Vec<Registration>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> crate::storage::Result<Services> {
        let head = storage.max_stream_ordering().await?;
        let keyring = KeyRing::new(
            keys.clone(),
            storage.clone(),
            federation.clone(),
            config.trusted_key_servers.clone(),
        );
        let push = Push::start(
            (storage.clone(), cluster.clone()),
            config.federation_verify_tls,
            cancel.clone(),
        );
        let appservices = AppServices::start(
            appservices,
            (storage.clone(), cluster.clone()),
            config.federation_verify_tls,
            cancel.clone(),
        );
        let joined = Arc::new(crate::state::joined::JoinedCache::new(
            storage.clone(),
            keys.server_name().to_owned(),
        ));
        let sender = Sender::new(
            (storage.clone(), cluster.clone()),
            joined.clone(),
            federation.clone(),
            keys.server_name().to_owned(),
            cancel,
        );
        let identity = crate::identity::IdentityClient::new(config.federation_verify_tls);
        let notifier = Notifier::new(head);
        let presence = Presence::new(
            config.presence,
            keys.server_name().to_owned(),
            storage.clone(),
            notifier.wakeups.clone(),
        )
        .await?;
        Ok(Services {
            limits: Arc::new(crate::limits::Limits::new(&config)),
            config,
            keys,
            federation,
            keyring,
            sender,
            backfiller: Backfiller::default(),
            partial_resyncs: Default::default(),
            ephemeral: Ephemeral::new(storage.clone(), notifier.wakeups.clone()).await?,
            presence,
            account_data: AccountDataStream::new(storage.max_account_data_position().await?),
            e2e: E2eStream::new(
                storage.max_e2e_position().await?,
                storage.clone(),
                notifier.wakeups.clone(),
            ),
            metrics: Metrics::default(),
            push,
            appservices,
            state: StateCache::new(storage.clone()),
            joined,
            rooms: RoomLocks::new(cluster.clone()),
            cluster,
            storage,
            notifier,
            registration_nonces: RegistrationNonces::default(),
            registration_sessions: RegistrationSessions::default(),
            auth_sessions: AuthSessions::default(),
            lazy_members: LazyLoadCache::default(),
            guest_revocations: GuestRevocations::default(),
            connections: Connections::default(),
            expiries: Default::default(),
            identity,
        })
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        self.keys.server_name()
    }
}

/// The events stream's head (the newest stream ordering stored), and
/// the wake-ups of long-polling requests by whom a new event concerns
/// ([`Wakeups`]).
pub struct Notifier {
    head: StreamHead,
    pub wakeups: Arc<Wakeups>,
}

impl Notifier {
    pub fn new(head: StreamOrdering) -> Self {
        Notifier {
            head: StreamHead::new(head),
            wakeups: Arc::new(Wakeups::default()),
        }
    }

    /// Events up to `stream` are stored; the requests of `topics` are
    /// woken (the head moves first, so that a woken request reads it).
    pub fn notify(&self, stream: StreamOrdering, topics: &[Topic]) {
        self.head.advance(stream);
        self.wakeups.wake(topics);
    }

    pub fn head(&self) -> StreamOrdering {
        self.head.get()
    }
}
