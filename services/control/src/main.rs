//! `berth-control`: flags, logging, signals; everything else is in the library.

use clap::Parser;

/// The control plane allocates and frees many small records per placement; mimalloc
/// spends about half the CPU glibc's allocator did there (measured by the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let config = berth_control::ControlConfig::parse();
    berth_telemetry::init("info", &config.log)?;
    berth_control::run_blocking(config, berth_telemetry::shutdown_signal())?;
    Ok(())
}

/// Transparent huge pages make placement slower: with them, the allocator's fresh pages
/// fault in as zeroed 2 MiB pages, and the zeroing is a visible share of berth-control's
/// CPU during placement (docs/benchmarks.md, "Analysis"). The flag covers the
/// whole process and is checked at each fault, so setting it here is early enough.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("berth-control: cannot disable transparent huge pages: {error}");
    }
}
