//! `tim-vzd-sync`: the directory sync as a process.

use clap::{Parser, Subcommand};
use tim_vzd_sync::config::{Config, LogFormat};

/// TI-Messenger VZD-FHIR-Directory sync: our domains in the federation list, the verified
/// federation list for our homeservers (I_internVerification), directory entries and search.
///
/// Needs the directory's provider credentials (directory.base_url, token_url, client_id,
/// client_secret) and the TI root CAs (federation_list.trust_anchors). Every config key can be
/// overridden by a `TIM_VZD_`-prefixed environment variable; nested keys use `__`
/// (TIM_VZD_DIRECTORY__CLIENT_SECRET).
#[derive(Parser, Debug)]
#[command(name = "tim-vzd-sync", version)]
struct Cli {
    /// Path of the TOML config file (see tim-vzd-sync.example.toml).
    #[arg(long, short, global = true, env = "TIM_VZD_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sync and its internal API (the default).
    Serve,
    /// Print the internal API's bearer token (making it if there is none).
    InternalToken,
}

fn init_logging(config: &Config) {
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn run() -> Result<(), String> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::InternalToken => {
            println!("{}", tim_vzd_sync::internal_token(&config)?.expose());
            Ok(())
        }
        Command::Serve => {
            let (listen, search_listen) = (config.listen, config.search_listen);
            let sync = tim_vzd_sync::VzdSync::open(config).await?;
            let bind = |addr| async move {
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))
            };
            let (internal, search) = (bind(listen).await?, bind(search_listen).await?);
            tracing::info!(%listen, %search_listen, "vzd sync listening (internal API, directory search)");
            tim_vzd_sync::serve(sync, internal, search, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
