//! `tim-push-gateway`: the push gateway as a process.

use clap::{Parser, Subcommand};
use tim_push_gateway::{
    Gateway,
    config::{Config, LogFormat},
};

/// TI-Messenger push gateway: the Matrix Push Gateway API delivering content-free Web Push.
///
/// Without a config file it runs on embedded defaults: API on 127.0.0.1:8009, one app
/// `de.tim.web`, VAPID key in ./data/vapid_private_key.pem (made on first start). Every config
/// key can be overridden by a `TIM_PUSH_`-prefixed environment variable (e.g. TIM_PUSH_LISTEN,
/// TIM_PUSH_VAPID_SUBJECT); nested keys use `__` (TIM_PUSH_DELIVERY__MAX_ATTEMPTS).
#[derive(Parser, Debug)]
#[command(name = "tim-push-gateway", version)]
struct Cli {
    /// Path of the TOML config file (see tim-push-gateway.example.toml).
    #[arg(long, short, global = true, env = "TIM_PUSH_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print the VAPID public key clients subscribe with (making the key if there is none).
    VapidPublicKey,
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
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run() -> Result<(), String> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&config);
    let listen = config.listen;
    let gateway = Gateway::from_config(config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::VapidPublicKey => {
            println!("{}", gateway.vapid_public_key());
            Ok(())
        }
        Command::Serve => {
            if gateway.config.vapid_subject == Config::default().vapid_subject {
                tracing::warn!("vapid_subject is the default; set it to the operator's contact");
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            tracing::info!(%listen, apps = ?gateway.config.apps.keys().collect::<Vec<_>>(), "push gateway listening");
            tim_push_gateway::serve(gateway, listener, shutdown_signal())
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
