//! Room events: the parsed PDU, building and signing this server's own
//! events, and the authorisation rules.

pub mod auth;
pub mod build;
mod pdu;

pub use build::{EventTemplate, Placement, build_event};
pub use pdu::{Pdu, PduParseError};
