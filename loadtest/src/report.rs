//! What every scenario's report offers the binary (a verdict, problems, a table, its
//! series for the charts of `--report`, and through `Serialize` one JSON object),
//! and the pieces reports share.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use tokio::time::Instant;

use crate::sys;
use crate::timeline::Series;

/// Lines of `problems` in a report.
const PROBLEM_LINES: usize = 20;

/// A scenario's report.
pub trait Report: Serialize {
    /// The scenario's name (`fanout`, `chat`, ...).
    fn scenario(&self) -> &str;
    /// How the run ended.
    fn outcome(&self) -> &Outcome;
    /// Whether every check passed.
    fn ok(&self) -> bool {
        self.outcome().ok
    }
    /// Where things went wrong; bounded.
    fn problems(&self) -> &[String] {
        &self.outcome().problems
    }
    /// The report for people as (name, value) rows: the plan, what was measured,
    /// the harness's cost and the verdict.
    fn rows(&self) -> Vec<(&'static str, String)>;
    /// The report for people: an aligned two-column table of its rows, then the
    /// problems.
    fn table(&self) -> String {
        table(&self.rows(), self.problems())
    }
    /// The counts the verdict rests on (`lost`, `duplicated`, ...), for a headline.
    fn checks(&self) -> Vec<(&'static str, u64)>;
    /// The run over time, for charts; `None` when the scenario keeps none.
    fn series(&self) -> Option<&Series> {
        None
    }
}

/// How a run ended: the closing fields of every report (flattened into it).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// CPU time (user + system) of this process during the run; includes an
    /// in-process gateway when there is one.
    pub harness_cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Whether every check of the scenario passed.
    pub ok: bool,
    /// Where things went wrong; bounded.
    pub problems: Vec<String>,
}

impl Outcome {
    /// The closing rows of a table: the harness's cost and the verdict.
    pub fn rows(&self) -> [(&'static str, String); 2] {
        closing_rows(self.harness_cpu_seconds, self.wall_seconds, self.ok)
    }
}

/// The closing rows of a table: the harness's cost and the verdict.
pub fn closing_rows(cpu_seconds: f64, wall_seconds: f64, ok: bool) -> [(&'static str, String); 2] {
    [
        (
            "harness",
            format!("{cpu_seconds:.2} CPU s in {wall_seconds:.2} s wall"),
        ),
        ("result", if ok { "OK" } else { "FAILED" }.into()),
    ]
}

/// A run's start, for its wall and CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    pub started: Instant,
    cpu_seconds: f64,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            started: Instant::now(),
            cpu_seconds: sys::cpu_seconds(),
        }
    }

    /// The outcome of a run that ends now.
    pub fn outcome(&self, ok: bool, problems: Problems) -> Outcome {
        Outcome {
            harness_cpu_seconds: sys::cpu_seconds() - self.cpu_seconds,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            ok,
            problems: problems.finish(),
        }
    }
}

/// Rows as an aligned two-column table, then the problems, indented.
pub fn table(rows: &[(&str, String)], problems: &[String]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}").expect("bug: String write");
    }
    for line in problems {
        writeln!(out, "  {line}").expect("bug: String write");
    }
    out
}

/// Counts by kind as `kind n, kind n`, or `none`.
pub fn counts(by_kind: &BTreeMap<String, u64>) -> String {
    if by_kind.is_empty() {
        return "none".into();
    }
    by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A report's `problems`: a bounded list, with a few samples per repeated kind.
#[derive(Debug, Default)]
pub struct Problems {
    lines: Vec<String>,
    more: usize,
    per_kind: HashMap<&'static str, usize>,
}

impl Problems {
    /// Samples of one kind kept at most.
    const SAMPLES: usize = 3;

    pub fn push(&mut self, line: String) {
        if self.lines.len() < PROBLEM_LINES {
            self.lines.push(line);
        } else {
            self.more += 1;
        }
    }

    pub fn sample(&mut self, kind: &'static str, line: String) {
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        if *n <= Self::SAMPLES {
            self.push(line);
        } else {
            self.more += 1;
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.lines.push(format!("... and {} more", self.more));
        }
        self.lines
    }
}
