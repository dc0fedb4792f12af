use clap::Parser;

/// glibc raises its mmap threshold after each large free, so the 19 MiB argon2 buffers of a
/// burst of logins end up in per-thread arenas and stay resident (hundreds of MB measured). A
/// fixed threshold returns every large buffer to the system when it is freed.
fn fix_malloc_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

fn main() {
    fix_malloc_threshold();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}

async fn run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = tim_homeserver::cli::Cli::parse();
    if let Err(e) = tim_homeserver::cli::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
