//! `log_format`: how log lines are written (`log` is a tracing filter, checked
//! where logging starts).

use super::error::{invalid, ConfigError};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The format a `log_format` value names; an unknown one is an error naming
    /// the field.
    pub(crate) fn parse(value: &str) -> Result<LogFormat, ConfigError> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(invalid(
                "log_format",
                format!("{other:?} is neither \"text\" nor \"json\""),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn log_format_from_file_then_env_and_unknown_values_named() {
        let mut c = Config::from_toml("log_format = \"json\"").unwrap();
        assert_eq!(c.log_format().unwrap(), LogFormat::Json);
        c.apply_env(|k| (k == "GATEWAY_LOG_FORMAT").then(|| "text".to_string()));
        assert_eq!(c.log_format().unwrap(), LogFormat::Text);
        assert_eq!(Config::default().log_format().unwrap(), LogFormat::Text);
        c.apply_env(|k| (k == "GATEWAY_LOG_FORMAT").then(|| "JSON!".to_string()));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("log_format") && e.contains("JSON!"), "{e}");
    }
}
