//! Tracing set-up: the filter comes from `RUST_LOG` when it holds at least one valid
//! directive and from the binary's default otherwise; the format is text, or JSON lines
//! with `--log-json` / `BERTH_LOG_JSON`.

use crate::TelemetryError;
use clap::builder::BoolishValueParser;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::EnvFilter;

/// The variable holding filter directives (`tracing_subscriber`'s convention).
pub const LOG_FILTER_ENV: &str = "RUST_LOG";
/// The environment twin of `--log-json`.
pub const LOG_JSON_ENV: &str = "BERTH_LOG_JSON";

/// The logging flags of a binary (flatten them into its flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(
        long,
        env = LOG_JSON_ENV,
        value_parser = BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub log_json: bool,
}

/// Installs the global subscriber writing to stderr. `default_filter` holds the
/// directives used when `RUST_LOG` is unset, empty or holds no valid directive (e.g.
/// `"info"`, or `"warn,berth_bench=info"`).
pub fn init(default_filter: &str, args: &LogArgs) -> Result<(), TelemetryError> {
    let filter = filter(
        std::env::var(LOG_FILTER_ENV).ok().as_deref(),
        default_filter,
    );
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let installed = if args.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(TelemetryError::Subscriber)
}

/// The filter for a `RUST_LOG` value: its valid directives (an invalid one is reported
/// on stderr and skipped), or `default_filter` when there are none.
pub fn filter(rust_log: Option<&str>, default_filter: &str) -> EnvFilter {
    let valid: Vec<Directive> = rust_log
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| match d.parse::<Directive>() {
            Ok(directive) => Some(directive),
            Err(e) => {
                eprintln!("ignoring `{d}` in {LOG_FILTER_ENV}: {e}");
                None
            }
        })
        .collect();
    if valid.is_empty() {
        EnvFilter::builder().parse_lossy(default_filter)
    } else {
        valid
            .into_iter()
            .fold(EnvFilter::default(), EnvFilter::add_directive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn shown(rust_log: Option<&str>, default_filter: &str) -> String {
        filter(rust_log, default_filter).to_string()
    }

    #[test]
    fn the_default_applies_without_rust_log() {
        assert_eq!(shown(None, "info"), "info");
        assert_eq!(shown(Some(""), "warn"), "warn");
        assert_eq!(shown(Some(" , "), "warn"), "warn");
    }

    #[test]
    fn a_default_may_hold_several_directives() {
        let shown = shown(None, "warn,berth_bench=info,berth_sim=error");
        for directive in ["warn", "berth_bench=info", "berth_sim=error"] {
            assert!(
                shown.split(',').any(|d| d == directive),
                "{directive} missing from {shown}"
            );
        }
    }

    #[test]
    fn rust_log_replaces_the_default() {
        assert_eq!(shown(Some("debug"), "info"), "debug");
        let targeted = shown(Some("berth_control=trace"), "info");
        assert_eq!(targeted, "berth_control=trace");
    }

    #[test]
    fn invalid_directives_are_skipped() {
        assert_eq!(shown(Some("debug,berth=notalevel"), "info"), "debug");
        assert_eq!(shown(Some("berth=notalevel"), "warn"), "warn");
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_json_is_a_flag_with_an_optional_value() {
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
                .map(|f| f.log.log_json)
        };
        assert_eq!(parse(&[]).ok(), Some(false));
        assert_eq!(parse(&["--log-json"]).ok(), Some(true));
        assert_eq!(parse(&["--log-json=false"]).ok(), Some(false));
        assert_eq!(parse(&["--log-json=yes"]).ok(), Some(true));
        assert!(parse(&["--log-json=sometimes"]).is_err());
    }
}
