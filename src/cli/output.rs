//! Tables for people, JSON and YAML for scripts: every command builds one serialisable value
//! and a table view of it.

use std::io::Write;

use serde::Serialize;

use super::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Rows under upper-case headers, columns padded to the widest cell (as kubectl prints).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in its cells are escaped (see [`escape_for_terminal`]).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| escape_for_terminal(&c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 3;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(self.headers.clone());
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// Text from an image or a registry (file names, link targets, `version.json`, error text) made
/// safe for a terminal: C0 and C1 control characters (ESC starts sequences that retitle the
/// window or write the clipboard: OSC 52), DEL and the bidirectional overrides that reorder what
/// is shown ("Trojan Source") are written as `\x1b` or `\u{202e}`; a backslash stays itself.
/// JSON and YAML output is left alone: their encoders escape, and scripts want the real bytes.
pub fn escape_for_terminal(text: &str) -> String {
    if !text.chars().any(is_unsafe_for_terminal) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !is_unsafe_for_terminal(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out
}

fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Prints `value` in `format`; `table` gives the table view.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> Result<(), CliError> {
    let text = match format {
        Format::Table => table(value).render(),
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))? + "\n"
        }
        Format::Yaml => {
            serde_yaml::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // `kubectl mpo files … | head`: a closed pipe is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_lines_not_trailed_by_spaces() {
        let mut table = Table::new(&["NAME", "KIND"]);
        table.row(vec!["hello-world".into(), "module".into()]);
        table.row(vec!["x".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME          KIND\nhello-world   module\nx\n"
        );
    }

    #[test]
    fn cells_cannot_drive_the_terminal() {
        let mut table = Table::new(&["PATH"]);
        // OSC 52 (write the clipboard), a CSI colour, a newline, DEL, C1 CSI and a bidi override.
        table.row(vec!["\u{1b}]52;c;ZXZpbA==\u{7}x".into()]);
        table.row(vec!["a\u{1b}[31mred\nb\u{7f}\u{9b}c\u{202e}fdp.exe".into()]);
        table.row(vec!["plain/ünïcode ✓ back\\slash\ttab".into()]);
        let rendered = table.render();
        assert!(
            !rendered
                .chars()
                .any(|c| c != '\n' && is_unsafe_for_terminal(c)),
            "{rendered:?}"
        );
        assert_eq!(
            rendered,
            "PATH\n\\x1b]52;c;ZXZpbA==\\x07x\na\\x1b[31mred\\x0ab\\x7f\\u{9b}c\\u{202e}fdp.exe\nplain/ünïcode ✓ back\\slash\\x09tab\n"
        );
    }

    #[test]
    fn an_empty_table_prints_its_headers() {
        assert_eq!(Table::new(&["NAME"]).render(), "NAME\n");
    }
}
