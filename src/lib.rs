//! weft, a Matrix homeserver. See ARCHITECTURE.md for the map.

pub mod account_data;
pub mod accounts;
pub mod acl;
pub mod backfill;
pub mod client_api;
pub mod config;
pub mod ephemeral;
pub mod error;
pub mod event_checks;
pub mod events;
pub mod federation_api;
pub mod federation_client;
pub mod filter;
pub mod keyring;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod services;
pub mod state;
pub mod storage;
pub mod timeline;
pub mod tls;
pub mod visibility;
