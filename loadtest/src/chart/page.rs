//! The report file around the charts: an HTML page (well-formed XML too, so any XML
//! parser can check it) or one SVG with the text above the charts stacked. Every
//! string from the run is escaped.

use std::fmt::Write as _;

use super::document::Document;
use super::plot::{grouped, HEIGHT, WIDTH};

const STYLE: &str = "body{font-family:sans-serif;max-width:1000px;margin:1em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4;white-space:nowrap}.ok{color:#1a7f37}.failed{color:#cf222e}.bad{color:#cf222e;font-weight:bold}\
figure{margin:1.5em 0}figure svg{max-width:100%;height:auto}figcaption{font-size:90%;color:#555}code{word-break:break-all}";

/// Text for XML (HTML and SVG), in content and in attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn verdict(doc: &Document) -> &'static str {
    if doc.ok {
        "OK"
    } else {
        "FAILED"
    }
}

/// The checks as `lost 0, duplicated 0, ...`.
fn checks(doc: &Document) -> String {
    doc.checks
        .iter()
        .map(|(k, n)| format!("{k} {}", grouped(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the charts add up to, as `deliveries 20,002,000, connect 10,001`.
fn totals(doc: &Document) -> String {
    doc.totals
        .iter()
        .map(|(k, n)| format!("{} {}", k.replace('_', " "), grouped(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The self-contained page: the verdict, the parameters and every row of the
/// report in a table, the problems, then each chart inline with its caption.
pub fn html(doc: &Document) -> String {
    let mut o = String::new();
    let title = format!("loadtest {}: {}", doc.scenario, verdict(doc));
    let class = if doc.ok { "ok" } else { "failed" };
    write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>loadtest {}: <span class=\"{class}\">{}</span></h1>\n",
        escape(&title),
        escape(&doc.scenario),
        verdict(doc)
    ).expect("bug: String write");
    o.push_str("<p>");
    for (i, (k, n)) in doc.checks.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let bad = if *n > 0 { " class=\"bad\"" } else { "" };
        write!(o, "{sep}<span{bad}>{} {}</span>", escape(k), grouped(*n))
            .expect("bug: String write");
    }
    o.push_str("</p>\n<table>\n");
    let mut row = |k: &str, v: &str| {
        writeln!(o, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v))
            .expect("bug: String write");
    };
    if let Some(started) = &doc.started {
        row("started", started);
    }
    for (k, v) in &doc.rows {
        row(k, v);
    }
    if !doc.totals.is_empty() {
        row("in the charts", &totals(doc));
    }
    writeln!(
        o,
        "<tr><th>command</th><td><code>{}</code></td></tr>\n</table>",
        escape(&doc.command)
    )
    .expect("bug: String write");
    if !doc.problems.is_empty() {
        o.push_str("<h2>Problems</h2>\n<ul>\n");
        for p in &doc.problems {
            writeln!(o, "<li>{}</li>", escape(p)).expect("bug: String write");
        }
        o.push_str("</ul>\n");
    }
    for chart in &doc.charts {
        writeln!(
            o,
            "<figure id=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>",
            chart.id,
            chart.svg.trim(),
            escape(&chart.caption)
        )
        .expect("bug: String write");
    }
    if doc.truncated {
        o.push_str("<p>The run outlasted the series' bound: its later part is only in the totals above.</p>\n");
    }
    writeln!(
        o,
        "<p hidden=\"hidden\" id=\"totals\"{}></p>",
        doc.totals
            .iter()
            .map(|(k, n)| format!(" data-{}=\"{n}\"", attr_name(k)))
            .collect::<String>()
    )
    .expect("bug: String write");
    o.push_str("</body>\n</html>\n");
    o
}

/// Lines of text above the charts at most, and characters per line (at 13 px; the
/// bold 14 px lines get fewer).
const TEXT_LINES: usize = 30;
const LINE_CHARS: usize = 128;
const LINE_HEIGHT: u32 = 18;

/// One picture: the verdict and the report's rows as text, then the charts one
/// under another.
pub fn svg(doc: &Document) -> String {
    // (font size, bold, text); long texts wrap.
    let mut lines: Vec<(u32, bool, String)> = vec![(
        20,
        true,
        format!("loadtest {}: {}", doc.scenario, verdict(doc)),
    )];
    let mut add = |size: u32, bold: bool, text: &str| {
        let width = if bold { LINE_CHARS * 6 / 7 } else { LINE_CHARS };
        lines.extend(wrapped(text, width).into_iter().map(|t| (size, bold, t)));
    };
    add(14, true, &checks(doc));
    if let Some(started) = &doc.started {
        add(13, false, &format!("started: {started}"));
    }
    for (k, v) in &doc.rows {
        add(13, false, &format!("{k}: {v}"));
    }
    if !doc.totals.is_empty() {
        add(13, false, &format!("in the charts: {}", totals(doc)));
    }
    add(13, false, &format!("command: {}", doc.command));
    for p in &doc.problems {
        add(13, false, &format!("problem: {p}"));
    }
    if doc.truncated {
        add(
            13,
            false,
            "the run outlasted the series' bound: its later part is only in the totals",
        );
    }
    if lines.len() > TEXT_LINES {
        lines.truncate(TEXT_LINES - 1);
        lines.push((13, false, "...".into()));
    }
    let head = 16 + LINE_HEIGHT * lines.len() as u32 + 10;
    let height = head + HEIGHT * doc.charts.len() as u32;
    let mut o = String::new();
    writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\">\n<rect width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>"
    )
    .expect("bug: String write");
    writeln!(
        o,
        "<title>{}</title>",
        escape(&format!("loadtest {}: {}", doc.scenario, verdict(doc)))
    )
    .expect("bug: String write");
    let mut y = 16;
    for (i, (size, bold, text)) in lines.iter().enumerate() {
        y += LINE_HEIGHT + if i == 0 { 4 } else { 0 };
        let weight = if *bold { " font-weight=\"bold\"" } else { "" };
        let fill = match (i, doc.ok) {
            (0, true) => "#1a7f37",
            (0, false) => "#cf222e",
            _ => "#222222",
        };
        writeln!(
            o,
            "<text x=\"12\" y=\"{y}\" font-size=\"{size}\" fill=\"{fill}\"{weight}>{}</text>",
            escape(text)
        )
        .expect("bug: String write");
    }
    for (i, chart) in doc.charts.iter().enumerate() {
        let top = head + HEIGHT * i as u32;
        let inner = chart.svg.trim();
        // Nest the chart's own <svg> at its place.
        let nested = match inner.strip_prefix("<svg ") {
            Some(rest) => format!("<svg x=\"0\" y=\"{top}\" {rest}"),
            None => inner.to_owned(),
        };
        writeln!(o, "<g id=\"{}\">\n{nested}\n</g>", chart.id).expect("bug: String write");
    }
    o.push_str("</svg>\n");
    o
}

/// `text` in lines of at most `width` characters (more than 4), broken at spaces
/// where it can be (a word longer than a line is cut); continuation lines are
/// indented.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    const INDENT: &str = "    ";
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut room = width;
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let sep = usize::from(used > 0);
            if used + sep + word.len() <= room {
                if sep == 1 {
                    line.push(' ');
                }
                line.extend(&word);
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
            } else {
                let rest = word.split_off(room.min(word.len()));
                lines.push(word.into_iter().collect());
                word = rest;
            }
            room = width - INDENT.len();
        }
    }
    lines.push(line);
    for l in lines.iter_mut().skip(1) {
        l.insert_str(0, INDENT);
    }
    lines
}

/// A name usable in a `data-` attribute: lowercase letters, digits and hyphens.
fn attr_name(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_wrap_at_spaces_and_long_words_are_cut() {
        assert_eq!(wrapped("a bb ccc", 20), ["a bb ccc"]);
        assert_eq!(wrapped("aaa bbb ccc", 7), ["aaa bbb", "    ccc"]);
        assert_eq!(
            wrapped("abcdefghij k", 6),
            ["abcdef", "    gh", "    ij", "    k"]
        );
        assert_eq!(wrapped("", 5), [""]);
    }
}
