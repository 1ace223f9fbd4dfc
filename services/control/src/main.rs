//! `berth-control`: flags, logging, signals; everything else is in the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The control plane allocates and frees many small records per placement; mimalloc
/// spends about half the CPU glibc's allocator did there (measured by the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let config = berth_control::ControlConfig::parse();
    let filter = EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::INFO.into())
        .from_env_lossy();
    if config.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    berth_control::run_blocking(config, shutdown_signal())?;
    Ok(())
}

/// Transparent huge pages made placement slower: with them, the allocator's fresh pages
/// faulted in as zeroed 2 MiB pages, and zeroing took 5.6% of berth-control's CPU during
/// placement (1.1% with 4 KiB pages; docs/benchmarks.md, session 8). The flag covers the
/// whole process and is checked at each fault, so setting it here is early enough.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("berth-control: cannot disable transparent huge pages: {error}");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
