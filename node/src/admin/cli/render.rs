//! How a command's reply reaches standard output: as lines and tables for people, or as JSON
//! with `--json`. Each reply says how it looks both ways ([`Render`]); `execute` prints it
//! once ([`Outcome::print`]).

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

use super::{Exit, Failure};

/// A reply the CLI prints.
pub(in crate::admin) trait Render {
    /// What is printed without `--json`: lines and tables, without the last newline.
    fn table(&self) -> String;
    /// What `--json` prints, without the last newline.
    fn json(&self) -> serde_json::Result<String>;
}

/// What a command ends with: what it prints on standard output and its exit code.
pub(in crate::admin) struct Outcome {
    shown: Shown,
    exit: Exit,
}

enum Shown {
    /// A table, or JSON with `--json`.
    Reply(Box<dyn Render>),
    /// A line for people; `--json` prints nothing, having nothing to add.
    Note(String),
    /// The command printed what it had as it went (an export streams its lines).
    Nothing,
}

impl Outcome {
    /// Prints `reply`; exit 0.
    pub(in crate::admin) fn reply(reply: impl Render + 'static) -> Outcome {
        Outcome {
            shown: Shown::Reply(Box::new(reply)),
            exit: Exit::Ok,
        }
    }

    /// Prints `line` unless `--json`; exit 0.
    pub(super) fn note(line: String) -> Outcome {
        Outcome {
            shown: Shown::Note(line),
            exit: Exit::Ok,
        }
    }

    /// Prints nothing more; exit 0.
    pub(super) fn nothing() -> Outcome {
        Outcome {
            shown: Shown::Nothing,
            exit: Exit::Ok,
        }
    }

    /// The same output with another exit code.
    pub(in crate::admin) fn exit(self, exit: Exit) -> Outcome {
        Outcome { exit, ..self }
    }

    /// Prints the outcome as a table or as JSON; its exit code.
    pub(super) fn print(&self, json: bool) -> Result<Exit, Failure> {
        if let Some(text) = self.text(json)? {
            println!("{text}");
        }
        Ok(self.exit)
    }

    /// What [`print`](Self::print) writes, without the last newline.
    pub(super) fn text(&self, json: bool) -> Result<Option<String>, Failure> {
        Ok(match &self.shown {
            Shown::Reply(r) if json => Some(
                r.json()
                    .map_err(|e| Failure::new(Exit::Failed, format!("cannot print: {e}")))?,
            ),
            Shown::Reply(r) => Some(r.table()),
            Shown::Note(line) if !json => Some(line.clone()),
            Shown::Note(_) | Shown::Nothing => None,
        })
    }
}

/// Prints `reply` now, as a table or JSON: for a command with more to do after it.
pub(super) fn print_now(reply: impl Render + 'static, json: bool) -> Result<(), Failure> {
    Outcome::reply(reply).print(json).map(|_| ())
}

/// A reply's `--json` form: the reply itself, indented.
pub(super) fn pretty<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(v)
}

pub(super) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    t
}

pub(super) fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

pub(super) fn ms_to_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    rfc3339(time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub(super) fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t?.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Renders `reply` as `execute` prints it (both ways), for the tests that pin the output.
#[cfg(test)]
pub(super) fn printed(reply: impl Render + 'static, json: bool) -> String {
    let text = Outcome::reply(reply).text(json).ok().flatten();
    text.map(|t| t + "\n").unwrap_or_default()
}
