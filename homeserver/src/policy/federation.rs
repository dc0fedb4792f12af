//! Which servers a homeserver federates with (A-FED-01..17). Called on every inbound
//! federation request, every outbound one and every server name met in events, so the TI-M
//! federation list (issue 16) changes only what `FederationScope` holds, never the call sites.

use std::collections::BTreeSet;

use ruma::{OwnedServerName, ServerName};

/// The servers a homeserver may talk to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FederationScope {
    /// Every server (plain Matrix; the default until the federation list is wired in).
    #[default]
    Open,
    /// Only these servers (the operator's allow list, later gematik's federation list).
    Only(BTreeSet<OwnedServerName>),
}

/// Whether `server_name` may send us requests and events, and receive ours.
pub fn may_federate_with(scope: &FederationScope, server_name: &ServerName) -> bool {
    match scope {
        FederationScope::Open => true,
        FederationScope::Only(allowed) => allowed.contains(server_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_decides() {
        let a = ruma::server_name!("a.example");
        let b = ruma::server_name!("b.example");
        assert!(may_federate_with(&FederationScope::Open, a));
        let only = FederationScope::Only([a.to_owned()].into());
        assert!(may_federate_with(&only, a));
        assert!(!may_federate_with(&only, b));
    }
}
