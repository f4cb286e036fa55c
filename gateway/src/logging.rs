//! Logging: text (the default) or JSON lines on stderr, filtered by `log`; JSON
//! lines carry the node's name.

use anyhow::Context;
use gateway::config::LogFormat;
use gateway::Config;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Install the process's subscriber as `config.log` and `config.log_format` say.
pub(crate) fn init(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log).context("invalid log filter (log)")?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log_format()? {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(WithNode::new(&config.node_name))
            .init(),
    }
    Ok(())
}

/// The JSON format with `"node":<name>` first in every object: lines from every
/// thread carry it, without a span to enter on each.
struct WithNode {
    inner: Format<Json>,
    /// `"node":"<name>",`, encoded once.
    prefix: String,
}

impl WithNode {
    fn new(node: &str) -> WithNode {
        let name = serde_json::Value::from(node);
        WithNode {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true),
            prefix: format!("\"node\":{name},"),
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithNode
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{}{rest}", self.prefix),
            None => writer.write_str(&line),
        }
    }
}
