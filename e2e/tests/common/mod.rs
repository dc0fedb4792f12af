//! Helpers shared by the `matrix-sdk` end-to-end tests (`mod common;` in each).

use std::time::Duration;

use matrix_sdk::{Client, config::SyncSettings};
use tim_e2e::Server;

/// The password every test user gets.
pub const PASSWORD: &str = "secret-pw";

/// A client for the server, not logged in.
pub async fn new_client(server: &Server) -> Client {
    Client::builder()
        .homeserver_url(server.base_url())
        .build()
        .await
        .unwrap()
}

/// A new user registered (open registration, `m.login.dummy`) and logged in.
pub async fn register(server: &Server, name: &str) -> Client {
    let c = new_client(server).await;
    c.matrix_auth()
        .register({
            let mut r = matrix_sdk::ruma::api::client::account::register::v3::Request::new();
            r.username = Some(name.into());
            r.password = Some(PASSWORD.into());
            r.auth = Some(matrix_sdk::ruma::api::client::uiaa::AuthData::Dummy(
                matrix_sdk::ruma::api::client::uiaa::Dummy::new(),
            ));
            r
        })
        .await
        .unwrap();
    c
}

/// One sync without waiting.
pub async fn sync_once(c: &Client) {
    c.sync_once(SyncSettings::default().timeout(Duration::from_millis(0)))
        .await
        .unwrap();
}
