//! The charts of a report, each an SVG document drawn with plotters' SVG backend.
//! Built without plotters' `ttf` feature: no font files or system font libraries;
//! the backend writes `<text>` elements for the viewer to render and estimates their
//! size for the layout.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::latency::LatencyUs;
use crate::timeline::Series;

/// Size of one chart, in pixels.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 300;

const FONT: &str = "sans-serif";
/// Line colours, in order (colour-blind safe: Okabe and Ito's palette).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
];
const MARK: RGBColor = RGBColor(150, 150, 150);
/// Grid lines between the labelled ones.
const LIGHT: RGBAColor = RGBAColor(0, 0, 0, 0.04);

/// One chart of a report.
#[derive(Debug, Clone)]
pub struct Chart {
    /// `latency`, `deliveries`, `histogram` or `events`.
    pub id: &'static str,
    /// What its buckets add up to, in words.
    pub caption: String,
    /// An SVG document of [`WIDTH`] x [`HEIGHT`].
    pub svg: String,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = anyhow::Result<()>;

/// The charts `series` has data for.
pub fn charts(series: &Series) -> anyhow::Result<Vec<Chart>> {
    let mut out = Vec::new();
    let seconds = series.seconds().max(1.0);
    let name = series.latency_of;
    let samples = series.samples.len();
    if series.latency_count() > 0 {
        out.push(Chart {
            id: "latency",
            caption: format!(
                "{} per second: p50, p90, p99 and max of the latencies recorded in each of {samples} samples ({} in all); log scale.",
                capitalized(name),
                grouped(series.latency_count())
            ),
            svg: draw(|a| latency_over_time(a, series, seconds))?,
        });
    }
    if let Some(total) = series.deliveries() {
        out.push(Chart {
            id: "deliveries",
            caption: format!(
                "Deliveries per second, counted in {samples} samples of about a second ({} in all).",
                grouped(total)
            ),
            svg: draw(|a| deliveries_over_time(a, series, seconds))?,
        });
    }
    if !series.latency_buckets.is_empty() {
        let total: u64 = series.latency_buckets.iter().map(|b| b.count).sum();
        out.push(Chart {
            id: "histogram",
            caption: format!(
                "{} histogram of the whole run: {} latencies in buckets a quarter of a doubling wide; log scale.",
                capitalized(name),
                grouped(total)
            ),
            svg: draw(|a| histogram(a, series))?,
        });
    }
    if !series.events.is_empty() {
        let totals: Vec<String> = series
            .event_totals()
            .iter()
            .map(|(k, n)| format!("{k} {}", grouped(*n)))
            .collect();
        out.push(Chart {
            id: "events",
            caption: format!(
                "Connection events per whole second, by kind ({}); log scale, seconds without an event left out.",
                totals.join(", ")
            ),
            svg: draw(|a| events_over_time(a, series, seconds))?,
        });
    }
    Ok(out)
}

/// Draw one chart into a fresh SVG document.
fn draw(f: impl FnOnce(&Area<'_>) -> Drawn) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plotting)?;
        f(&root)?;
        root.present().map_err(plotting)?;
    }
    Ok(svg)
}

fn plotting<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// A chart's frame: a caption, margins and room for the axis labels.
fn frame<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, (FONT, 17))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(38)
        .y_label_area_size(70);
    b
}

fn latency_over_time(area: &Area<'_>, s: &Series, seconds: f64) -> Drawn {
    type Pick = fn(&LatencyUs) -> u64;
    let lines: [(&str, Pick); 4] = [
        ("p50", |l| l.p50),
        ("p90", |l| l.p90),
        ("p99", |l| l.p99),
        ("max", |l| l.max),
    ];
    let values = s
        .samples
        .iter()
        .filter_map(|x| x.latency.as_ref())
        .flat_map(|l| lines.iter().map(move |(_, f)| ms(f(l))));
    let (lo, hi) = log_range(values);
    let mut chart = frame(
        area,
        &format!("{} per second (ms)", capitalized(s.latency_of)),
    )
    .build_cartesian_2d(0f64..seconds, (lo..hi).log_scale())
    .map_err(plotting)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("ms")
        .y_label_formatter(&|v| log_label(*v, short_ms))
        .light_line_style(LIGHT)
        .draw()
        .map_err(plotting)?;
    marks(&mut chart, s, lo, hi, lo * (hi / lo).powf(0.03))?;
    for (i, (name, pick)) in lines.iter().enumerate() {
        let color = PALETTE[i];
        // A line per run of samples with latencies: no line across a gap.
        for run in runs(&s.samples, |x| x.latency.is_some()) {
            let points: Vec<(f64, f64)> = run
                .iter()
                .filter_map(|x| Some((x.mid(), ms(pick(x.latency.as_ref()?)).max(lo))))
                .collect();
            line(&mut chart, points, color)?;
        }
        legend(&mut chart, name, color)?;
    }
    labels(&mut chart)
}

fn deliveries_over_time(area: &Area<'_>, s: &Series, seconds: f64) -> Drawn {
    let points: Vec<(f64, f64)> = s
        .samples
        .iter()
        .filter(|x| x.span > 0.0)
        .map(|x| (x.mid(), x.deliveries.unwrap_or(0) as f64 / x.span))
        .collect();
    let top = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = frame(area, "Deliveries per second")
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(plotting)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("deliveries/s")
        .y_label_formatter(&|v| short_count(*v))
        .light_line_style(LIGHT)
        .draw()
        .map_err(plotting)?;
    marks(&mut chart, s, 0.0, top, top * 0.03)?;
    let color = PALETTE[0];
    chart
        .draw_series(
            AreaSeries::new(points, 0.0, color.mix(0.2)).border_style(color.stroke_width(2)),
        )
        .map_err(plotting)?;
    Ok(())
}

fn histogram(area: &Area<'_>, s: &Series) -> Drawn {
    let b = &s.latency_buckets;
    let ends = [b[0].low_us, b[b.len() - 1].high_us];
    let (lo, hi) = log_range(ends.iter().map(|us| us / 1000.0));
    let top = b.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = frame(area, &format!("{} histogram", capitalized(s.latency_of)))
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
        .map_err(plotting)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("count")
        .x_label_formatter(&|v| log_label(*v, short_ms))
        .y_label_formatter(&|v| short_count(*v))
        .light_line_style(LIGHT)
        .draw()
        .map_err(plotting)?;
    let color = PALETTE[0];
    chart
        .draw_series(b.iter().filter(|b| b.count > 0).map(|b| {
            let x0 = (b.low_us / 1000.0).max(lo);
            Rectangle::new(
                [(x0, 0.0), (b.high_us / 1000.0, b.count as f64)],
                color.mix(0.7).filled(),
            )
        }))
        .map_err(plotting)?;
    Ok(())
}

fn events_over_time(area: &Area<'_>, s: &Series, seconds: f64) -> Drawn {
    let top = s
        .events
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (lo, hi) = (0.5, decade_above(top * 1.5));
    let mut chart = frame(area, "Connection events per second")
        .build_cartesian_2d(0f64..seconds, (lo..hi).log_scale())
        .map_err(plotting)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("events/s")
        .y_label_formatter(&|v| log_label(*v, short_count))
        .light_line_style(LIGHT)
        .draw()
        .map_err(plotting)?;
    marks(&mut chart, s, lo, hi, lo * (hi / lo).powf(0.03))?;
    for (i, (kind, counts)) in s.events.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let seconds: Vec<(usize, u64)> = counts.iter().copied().enumerate().collect();
        for run in runs(&seconds, |(_, n)| *n > 0) {
            let points = run.iter().map(|&(t, n)| (t as f64 + 0.5, n as f64));
            line(&mut chart, points.collect(), color)?;
        }
        let total: u64 = counts.iter().sum();
        legend(
            &mut chart,
            &format!("{} ({})", plain(kind), grouped(total)),
            color,
        )?;
    }
    labels(&mut chart)
}

type Cartesian<'a, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>;

/// Phase changes as grey vertical lines from `lo` to `hi`, labelled at `label_y`
/// near the bottom, clear of the legend (beside the line, on its left in the last
/// fifth of the chart).
fn marks<Y>(chart: &mut Cartesian<'_, Y>, s: &Series, lo: f64, hi: f64, label_y: f64) -> Drawn
where
    Y: Ranged<ValueType = f64>,
{
    let (x_lo, x_hi) = (chart.x_range().start, chart.x_range().end);
    for (label, at) in s.marks.iter().filter(|(_, at)| (x_lo..=x_hi).contains(at)) {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*at, lo), (*at, hi)],
                MARK.stroke_width(1),
            )))
            .map_err(plotting)?;
        let (h, text) = match *at > x_lo + (x_hi - x_lo) * 0.8 {
            true => (HPos::Right, format!("{} ", plain(label))),
            false => (HPos::Left, format!(" {}", plain(label))),
        };
        let style = TextStyle::from((FONT, 12))
            .color(&MARK)
            .pos(Pos::new(h, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(text, (*at, label_y), style)))
            .map_err(plotting)?;
    }
    Ok(())
}

/// A line through `points`; a lone point as a dot.
fn line<Y>(chart: &mut Cartesian<'_, Y>, points: Vec<(f64, f64)>, color: RGBColor) -> Drawn
where
    Y: Ranged<ValueType = f64>,
{
    if let [p] = points[..] {
        chart
            .draw_series(std::iter::once(Circle::new(p, 3, color.filled())))
            .map_err(plotting)?;
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(plotting)?;
    Ok(())
}

/// Name one line in the legend (drawn by [`labels`]).
fn legend<Y>(chart: &mut Cartesian<'_, Y>, name: &str, color: RGBColor) -> Drawn
where
    Y: Ranged<ValueType = f64>,
{
    // An empty series carries the label, so lines split into runs are named once.
    chart
        .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
        .map_err(plotting)?
        .label(plain(name))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    Ok(())
}

fn labels<Y>(chart: &mut Cartesian<'_, Y>) -> Drawn
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plotting)
}

/// Stretches of consecutive items that `keep` holds for.
fn runs<T>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<&[T]> {
    items
        .split(|x| !keep(x))
        .filter(|r| !r.is_empty())
        .collect()
}

/// A log axis around `values` (positive; others ignored): whole decades, so that
/// the axis has its labels (plotters labels the powers of ten), from 0.001 up.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (0.001, 1.0);
    }
    let lo = 10f64.powf(lo.max(0.001).log10().floor()).max(0.001);
    // A hair below the decade, so that the axis labels it too.
    (lo * 0.999, decade_above(hi).max(lo * 10.0))
}

/// The power of ten at or above `v`.
fn decade_above(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

/// A log axis label: 1, 2 and 5 of each decade, the others left blank (when
/// plotters offers more than the powers of ten).
fn log_label(v: f64, short: fn(f64) -> String) -> String {
    let mantissa = v / 10f64.powf(v.log10().floor());
    match [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 0.01)
    {
        true => short(v),
        false => String::new(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// Milliseconds as axis labels: `0.05`, `3`, `250`, `1.2k`.
fn short_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

/// Counts as axis labels: `950`, `12k`, `1.3M`.
fn short_count(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", trim(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim(v / 1e3)),
        v => trim(v),
    }
}

/// A number with at most three significant digits, without trailing zeros.
fn trim(v: f64) -> String {
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => s,
    }
}

/// `20002000` as `20,002,000`.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Text for a chart label without control characters, which XML does not allow
/// (event kinds hold error texts); the backend escapes the rest.
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_numbers_grouped() {
        assert_eq!(
            [0.05, 3.0, 12.5, 250.0, 1234.0].map(short_ms),
            ["0.05", "3", "12.5", "250", "1.23k"]
        );
        assert_eq!(
            [950.0, 12_000.0, 1_300_000.0].map(short_count),
            ["950", "12k", "1.3M"]
        );
        assert_eq!(grouped(20_002_000), "20,002,000");
        assert_eq!(grouped(999), "999");
        assert_eq!(plain("close\u{1}<3001>\n&"), "close <3001> &");
        assert_eq!(capitalized("delivery latency"), "Delivery latency");
        let close = |(a, b): (f64, f64), (x, y): (f64, f64)| {
            assert!(
                (a / x - 1.0).abs() < 1e-6 && (b / y - 1.0).abs() < 1e-6,
                "{a} {b}"
            )
        };
        close(log_range([0.0, 2.0, 30.0].into_iter()), (0.999, 100.0));
        close(log_range([102.0, 994.0].into_iter()), (99.9, 1000.0));
        close(log_range([0.0001, 0.5].into_iter()), (0.000999, 1.0));
        assert_eq!(log_range(std::iter::empty()), (0.001, 1.0));
        assert_eq!(
            [1.0, 2.0, 3.0, 5.0, 20.0, 70.0, 500.0, 1000.0].map(|v| log_label(v, short_ms)),
            ["1", "2", "", "5", "20", "", "500", "1k"]
        );
    }
}
