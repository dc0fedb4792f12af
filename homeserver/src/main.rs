use clap::Parser;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = tim_homeserver::cli::Cli::parse();
    if let Err(e) = tim_homeserver::cli::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
