//! Figures of the placement library's criterion benchmark (`cargo bench -p
//! berth-placement --bench placement -- --output-format bencher`), which `scripts/bench`
//! runs and hands over as a file: lines such as
//! `test decide/binpack/10000 ... bench:      12,345 ns/iter (+/- 678)`.

use std::path::Path;
use std::time::Duration;

/// One benchmark's median time per iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    pub per_iteration: Duration,
}

pub fn read(path: &Path) -> Vec<Figure> {
    std::fs::read_to_string(path)
        .map(|text| parse(&text))
        .unwrap_or_default()
}

fn parse(text: &str) -> Vec<Figure> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("test ")?;
            let (name, rest) = rest.split_once(" ... bench:")?;
            let nanos: String = rest
                .split("ns/iter")
                .next()?
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            Some(Figure {
                name: name.trim().to_string(),
                per_iteration: Duration::from_nanos(nanos.parse().ok()?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bencher_lines() {
        let text = "\
Gnuplot not found, using plotters backend
test decide/binpack/10000 ... bench:      12,345 ns/iter (+/- 678)
test decide/spread ... bench:         987 ns/iter (+/- 12)
something else
";
        let figures = parse(text);
        assert_eq!(figures.len(), 2);
        assert_eq!(figures[0].name, "decide/binpack/10000");
        assert_eq!(figures[0].per_iteration, Duration::from_nanos(12_345));
        assert_eq!(figures[1].per_iteration, Duration::from_nanos(987));
    }
}
