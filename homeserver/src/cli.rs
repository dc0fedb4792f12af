//! The command line: `serve` and the operator commands, which talk to a running server's
//! operator API.

use std::{path::PathBuf, sync::Arc};

use clap::{Parser, Subcommand};

use crate::{
    config::{Config, LogFormat},
    server,
    tenants::Tenants,
};

/// TI-Messenger homeserver: many Matrix homeservers (one per organisation) in one process.
///
/// Without a config file it runs on embedded defaults: server name `localhost`, SQLite under
/// `./data`, client and federation API on 127.0.0.1:8008, operator API (used by the commands
/// below) and metrics on 127.0.0.1:8007; a TLS listener for other homeservers (port 8448)
/// opens when `federation.listen` and its certificate are configured. Every config key can be
/// overridden by
/// a `TIM_`-prefixed environment variable (e.g. TIM_SERVER_NAME, TIM_LISTEN, TIM_DATABASE_URL,
/// TIM_OPEN_REGISTRATION); nested keys use `__` (TIM_ARGON2__M_COST_KIB).
#[derive(Parser, Debug)]
#[command(name = "tim-homeserver", version)]
pub struct Cli {
    /// Path of the TOML config file (see tim-homeserver.example.toml).
    #[arg(long, short, global = true, env = "TIM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the homeserver.
    Serve,
    /// Manage users of a tenant (through the running server's operator API).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage single-use registration tokens (onboarding codes).
    RegistrationToken {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Add, remove and list tenants (Matrix domains) of the running server.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user. Prints the password if none is given.
    Create {
        localpart: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        admin: bool,
        /// Tenant server name (default: the configured server_name).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a registration token and print it.
    Create {
        /// How often it can be used (default 1).
        #[arg(long, default_value_t = 1)]
        uses: i64,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    Add {
        server_name: String,
    },
    Remove {
        server_name: String,
        /// Also delete the tenant's database.
        #[arg(long)]
        delete_data: bool,
    },
    List,
    /// Issue the tenant's admin API token (for the org-admin backend); the previous one stops
    /// working. Printed once.
    AdminToken {
        server_name: String,
    },
}

pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::User {
            command:
                UserCommand::Create {
                    localpart,
                    password,
                    admin,
                    tenant,
                },
        } => {
            let generated = password.is_none();
            let password = password.unwrap_or_else(|| crate::accounts::random_string(20));
            let tenant = tenant.unwrap_or_else(|| config.server_name.clone());
            let body =
                serde_json::json!({ "localpart": localpart, "password": password, "admin": admin });
            let out = operator(
                &config,
                reqwest::Method::POST,
                &format!("tenants/{tenant}/users"),
                Some(body),
            )
            .await?;
            println!("created {}", out["user_id"].as_str().unwrap_or_default());
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        Command::RegistrationToken {
            command: TokenCommand::Create { uses, tenant },
        } => {
            let tenant = tenant.unwrap_or_else(|| config.server_name.clone());
            let out = operator(
                &config,
                reqwest::Method::POST,
                &format!("tenants/{tenant}/registration_tokens"),
                Some(serde_json::json!({ "uses_allowed": uses })),
            )
            .await?;
            println!("{}", out["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Tenant { command } => {
            match command {
                TenantCommand::Add { server_name } => {
                    operator(
                        &config,
                        reqwest::Method::PUT,
                        &format!("tenants/{server_name}"),
                        Some(serde_json::json!({})),
                    )
                    .await?;
                    println!("serving {server_name}");
                }
                TenantCommand::Remove {
                    server_name,
                    delete_data,
                } => {
                    operator(
                        &config,
                        reqwest::Method::DELETE,
                        &format!("tenants/{server_name}?delete_data={delete_data}"),
                        None,
                    )
                    .await?;
                    println!("removed {server_name}");
                }
                TenantCommand::AdminToken { server_name } => {
                    let out = operator(
                        &config,
                        reqwest::Method::POST,
                        &format!("tenants/{server_name}/admin_token"),
                        Some(serde_json::json!({})),
                    )
                    .await?;
                    println!("{}", out["token"].as_str().unwrap_or_default());
                }
                TenantCommand::List => {
                    let out = operator(&config, reqwest::Method::GET, "tenants", None).await?;
                    for t in out["tenants"].as_array().into_iter().flatten() {
                        println!("{}", t.as_str().unwrap_or_default());
                    }
                }
            }
            Ok(())
        }
    }
}

async fn operator(
    config: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let token = server::operator_token(config)?;
    let url = format!("http://{}/_tim/operator/v1/{path}", config.internal_listen);
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the server at {url} (is it running?): {e}"))?;
    let status = resp.status();
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            json["error"].as_str().unwrap_or("request failed")
        );
    }
    Ok(json)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    if let Some(handle) = metrics.clone() {
        // Histogram samples are held until upkeep folds them into summaries: without it they
        // grow with every request when nobody scrapes /metrics.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    if config.open_registration {
        tracing::warn!(
            "open registration is ON: anyone who reaches this server can create an account (m.login.dummy)"
        );
    }
    let config = Arc::new(config);
    let tenants = Tenants::open(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = server::operator_token(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let internal = tokio::net::TcpListener::bind(config.internal_listen).await?;
    let federation_listener = match (
        &config.federation.listen,
        &config.federation.tls_certificate,
        &config.federation.tls_private_key,
    ) {
        (Some(addr), Some(cert), Some(key)) => {
            let tls = server::tls_config(cert, key)?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "federation listening (TLS)");
            Some((listener, tls))
        }
        _ => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        internal = %internal.local_addr()?,
        tenants = ?tenants.names(),
        "listening"
    );
    if !config.internal_listen.ip().is_loopback() {
        tracing::warn!(
            internal = %config.internal_listen,
            "the operator API and /metrics listen on a non-loopback address: keep it internal"
        );
    }
    let hs = tenants.default_tenant();
    if hs.stores.accounts.count_users().await.unwrap_or(0) == 0 {
        tracing::info!(
            "no users yet. Create one with `tim-homeserver user create alice` (prints a password), then log in with any Matrix client at http://{addr} as @alice:{}",
            hs.server_name
        );
    }
    let trusted = tenants.trusted_proxies().clone();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let public = server::serve(
        listener,
        server::router(tenants.clone()),
        &config.http,
        trusted.clone(),
        stopped(&stop),
    );
    let internal = server::serve(
        internal,
        server::internal_router(tenants.clone(), token, metrics),
        &config.http,
        trusted,
        stopped(&stop),
    );
    let federation = async {
        match federation_listener {
            Some((listener, tls)) => {
                server::serve_tls(
                    listener,
                    server::router(tenants.clone()),
                    &config.http,
                    tenants.trusted_proxies().clone(),
                    tls,
                    stopped(&stop),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let signal = async {
        shutdown_signal().await;
        let _ = stop.send(());
    };
    let (public, internal, federation, ()) = tokio::join!(public, internal, federation, signal);
    public?;
    internal?;
    federation?;
    tracing::info!("shutting down");
    tenants.close().await;
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send) ends serving gracefully.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
