//! tim-homeserver: a multi-tenant Matrix homeserver for the TI-Messenger.

pub mod accounts;
pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
pub mod error;
pub mod homeserver;
pub mod media;
pub mod net;
pub mod notices;
pub mod policy;
pub mod profiles;
pub mod push;
pub mod ratelimit;
pub mod receipts;
pub mod reports;
pub mod rooms;
pub mod server;
pub mod store;
pub mod sync;
pub mod tags;
pub mod tenants;
