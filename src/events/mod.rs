//! Room events: the parsed PDU, building and signing this server's own
//! events, and the authorisation rules.

pub mod auth;
pub mod build;
pub mod ids;
pub mod loose_json;
mod pdu;

pub use build::{EventTemplate, Placement, build_event};
pub use ids::event_id_of;
pub use pdu::{Pdu, PduParseError};
