//! `--report FILE`: a report to look at, written once the run is over. `.html`: one
//! self-contained page (the charts as inline SVG, the parameters and the verdict in
//! a table; no script); `.svg`: one picture with the verdict and the parameters as
//! text above the charts stacked.
//!
//! - `document`: what a report file shows (verdict, checks, rows, charts, totals),
//!   taken from a scenario's report.
//! - `plot`: the charts (latency percentiles per second, deliveries per second, the
//!   latency histogram, connection events per second), drawn with plotters' SVG
//!   backend.
//! - `page`: the HTML page and the stacked SVG around them; escaping.

mod document;
mod page;
mod plot;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::report::Report;
pub use document::Document;
pub use page::escape;
pub use plot::Chart;

/// What `--report` writes, from the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Svg,
}

/// Where a report goes and how, checked before the run starts.
#[derive(Debug, Clone)]
pub struct ReportFile {
    pub path: PathBuf,
    /// From the extension.
    pub format: Format,
}

impl ReportFile {
    /// `path` ends in `.html`, `.htm` or `.svg`, and its directory exists.
    pub fn new(path: &Path) -> anyhow::Result<ReportFile> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let format = match ext.as_deref() {
            Some("html" | "htm") => Format::Html,
            Some("svg") => Format::Svg,
            _ => bail!(
                "--report {}: the file name must end in .html or .svg",
                path.display()
            ),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "--report {}: no directory {}",
                path.display(),
                dir.display()
            );
        }
        Ok(ReportFile {
            path: path.to_owned(),
            format,
        })
    }

    /// Write `report`'s page or picture; `command` is the command line (with
    /// secrets already left out).
    pub fn write<R: Report>(&self, report: &R, command: &str) -> anyhow::Result<()> {
        let doc = Document::of(report, command)?;
        let text = match self.format {
            Format::Html => page::html(&doc),
            Format::Svg => page::svg(&doc),
        };
        std::fs::write(&self.path, text)
            .with_context(|| format!("--report: write {}", self.path.display()))
    }
}

/// The command line for a report: arguments joined by spaces (quoted when they
/// hold anything but plain characters), the values of --secret, --token and
/// --api-key replaced by `***`.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    const SECRET: [&str; 3] = ["--secret", "--token", "--api-key"];
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in args {
        let shown = if std::mem::take(&mut hide_next) {
            "***".to_owned()
        } else if let Some((flag, _)) = arg.split_once('=').filter(|(f, _)| SECRET.contains(f)) {
            format!("{flag}=***")
        } else {
            hide_next = SECRET.contains(&arg.as_str());
            arg
        };
        let plain = !shown.is_empty()
            && shown
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:,=*@%+".contains(c));
        out.push(if plain {
            shown
        } else {
            format!("'{}'", shown.replace('\'', r"'\''"))
        });
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::document::totals;
    use super::*;
    use crate::latency::{LatencyRecorder, LatencyUs, LogBucket};
    use crate::timeline::{Sample, Series};

    const NASTY: &str = "<script>alert('x')</script> & \"quoted\"";

    /// A series of `seconds` samples and a few events, one of a nasty kind.
    fn series(seconds: usize) -> Series {
        let latency = LatencyRecorder::new(1);
        let samples = (1..=seconds)
            .map(|t| {
                let values: Vec<u64> = (1..=100).map(|i| i * 37 * t as u64).collect();
                latency.record(0, &values);
                let mut h = crate::latency::histogram();
                values.iter().for_each(|v| h.record(*v).unwrap());
                Sample {
                    end: t as f64,
                    span: 1.0,
                    deliveries: Some(100),
                    latency: LatencyUs::of(&h),
                }
            })
            .collect();
        Series {
            started_unix_ms: 1_765_000_000_000,
            samples,
            latency_of: "delivery latency",
            latency_buckets: crate::latency::log_buckets(&latency.merged(), 4),
            events: vec![
                ("connect".into(), vec![90, 11]),
                (format!("disconnect {NASTY}"), vec![0, 0, 1]),
            ],
            marks: vec![("publishing".into(), 1.2), ("publishing ends".into(), 9.0)],
            truncated: false,
        }
    }

    fn document(series: &Series) -> Document {
        Document {
            scenario: "fanout".into(),
            ok: false,
            checks: vec![("lost", 0), ("duplicated", 2)],
            command: format!("loadtest --room-prefix '{NASTY}'"),
            started: Some("2025-12-06T05:46:40Z".into()),
            rows: vec![("plan", NASTY.into()), ("result", "FAILED".into())],
            problems: vec![format!("duplicated: {NASTY}")],
            charts: plot::charts(series).unwrap(),
            totals: totals(series),
            truncated: false,
        }
    }

    /// Every text node and attribute value of the document.
    fn texts<'a>(doc: &'a roxmltree::Document<'_>) -> Vec<&'a str> {
        let mut out = Vec::new();
        for n in doc.descendants() {
            out.extend(n.text());
            out.extend(n.attributes().map(|a| a.value()));
        }
        out
    }

    fn parse(text: &str) -> roxmltree::Document<'_> {
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(text, options)
            .unwrap_or_else(|e| panic!("well-formed: {e}\n{text}"))
    }

    #[test]
    fn the_page_is_well_formed_escapes_every_string_and_shows_the_totals() {
        let series = series(12);
        let doc = document(&series);
        assert_eq!(
            doc.charts.iter().map(|c| c.id).collect::<Vec<_>>(),
            ["latency", "deliveries", "histogram", "events"]
        );
        let text = page::html(&doc);
        let xml = parse(&text);
        assert!(
            !xml.descendants().any(|n| n.has_tag_name("script")),
            "no element from the run's strings"
        );
        let all = texts(&xml);
        for s in [NASTY, "FAILED", "2025-12-06T05:46:40Z"] {
            assert!(all.iter().any(|t| t.contains(s)), "{s} shown as text");
        }
        let svgs: Vec<_> = xml
            .descendants()
            .filter(|n| n.tag_name().name() == "svg")
            .collect();
        assert_eq!(svgs.len(), 4, "one inline SVG per chart");
        // The charts carry their text as <text> elements (no font files needed).
        for svg in &svgs {
            assert!(svg.descendants().any(|n| n.tag_name().name() == "text"));
        }
        assert!(all.iter().any(|t| t.contains("Deliveries per second")));
        let totals = xml
            .descendants()
            .find(|n| n.attribute("id") == Some("totals"))
            .expect("the totals");
        assert_eq!(totals.attribute("data-deliveries"), Some("1200"));
        assert_eq!(totals.attribute("data-delivery-latency"), Some("1200"));
        assert_eq!(totals.attribute("data-connect"), Some("101"));
        assert_eq!(
            series.latency_buckets.iter().map(|b| b.count).sum::<u64>(),
            1200
        );
    }

    #[test]
    fn the_picture_is_one_well_formed_svg_with_the_verdict_as_text() {
        let series = series(3);
        let doc = document(&series);
        let text = page::svg(&doc);
        let xml = parse(&text);
        let root = xml.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let nested = root
            .descendants()
            .filter(|n| n.tag_name().name() == "svg" && *n != root)
            .count();
        assert_eq!(nested, doc.charts.len());
        let all = texts(&xml);
        assert!(all.iter().any(|t| t.starts_with("loadtest fanout: FAILED")));
        assert!(all.iter().any(|t| t.contains("lost 0, duplicated 2")));
        assert!(all.iter().any(|t| t.contains(NASTY)));
        assert!(all
            .iter()
            .any(|t| t.contains("in the charts: deliveries 300, delivery latency 300")));
    }

    #[test]
    fn a_run_without_samples_or_events_has_no_charts_and_still_a_page() {
        let empty = Series {
            latency_of: "connect latency",
            ..Series::default()
        };
        let doc = document(&empty);
        assert!(doc.charts.is_empty());
        parse(&page::html(&doc));
        parse(&page::svg(&doc));
        assert!(escape(NASTY).chars().all(|c| !"<>\"'".contains(c)));
        let bucket = LogBucket {
            low_us: 1.0,
            high_us: 2.0,
            count: 1,
        };
        let one = Series {
            latency_buckets: vec![bucket],
            ..empty
        };
        assert_eq!(plot::charts(&one).unwrap().len(), 1);
    }

    #[test]
    fn report_files_are_html_or_svg_in_a_directory_that_exists() {
        let dir = std::env::temp_dir();
        assert_eq!(
            ReportFile::new(&dir.join("r.HTML")).unwrap().format,
            Format::Html
        );
        assert_eq!(
            ReportFile::new(Path::new("r.svg")).unwrap().format,
            Format::Svg
        );
        assert!(ReportFile::new(&dir.join("r.png")).is_err());
        assert!(ReportFile::new(Path::new("report")).is_err());
        assert!(ReportFile::new(Path::new("/nonexistent/dir/r.html")).is_err());
    }

    #[test]
    fn the_command_line_leaves_secrets_out_and_quotes_what_needs_it() {
        let args = [
            "loadtest",
            "--secret",
            "s3cret",
            "--token=abc",
            "fanout",
            "--api-key",
            "k",
            "--room-prefix",
            "a b'c",
            "--duration",
            "10s",
        ];
        assert_eq!(
            command_line(args.iter().map(|s| s.to_string())),
            r"loadtest --secret *** --token=*** fanout --api-key *** --room-prefix 'a b'\''c' --duration 10s"
        );
    }
}
