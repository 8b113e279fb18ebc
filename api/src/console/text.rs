//! A console's bytes as text for people reading a log (`job logs`, the machine timeline): the
//! one home of that rendering. ANSI escape sequences (colours, cursor moves, title changes)
//! are stripped, line endings become `\n`, a carriage return alone starts the line again (a
//! progress counter shows its last value), a backspace takes back the character before it, and
//! other control characters are dropped.

/// The last `lines` lines of the console output as plain text.
pub fn tail_text(bytes: &[u8], lines: usize) -> String {
    let text = plain_text(bytes);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

/// The console output as plain text (see the module's doc).
pub fn plain_text(bytes: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(bytes);
    let stripped = console::strip_ansi_codes(&lossy);
    let mut out = String::with_capacity(stripped.len());
    // Where the current line starts in `out`, so a lone CR can take it back.
    let mut line_start = 0;
    let mut chars = stripped.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' => out.truncate(line_start),
            '\n' => {
                out.push('\n');
                line_start = out.len();
            }
            '\u{8}' => {
                if out.len() > line_start {
                    out.pop();
                }
            }
            '\t' => out.push('\t'),
            // ESC of a sequence the parser did not know, BEL, NUL, …
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_cursor_moves_are_stripped() {
        let raw = b"\x1b[0;32m[  OK  ]\x1b[0m Started \x1b[1mudev\x1b[0m.\r\n\x1b[2J\x1b[H\x1b]0;title\x07login: ";
        assert_eq!(plain_text(raw), "[  OK  ] Started udev.\nlogin: ");
    }

    #[test]
    fn a_lone_carriage_return_and_backspaces_rewrite_the_line() {
        assert_eq!(plain_text(b"10%\r50%\r100%\r\ndone"), "100%\ndone");
        assert_eq!(plain_text(b"roo\x08\x08ot\n"), "rot\n");
        // A backspace never reaches into the line before.
        assert_eq!(plain_text(b"a\n\x08b"), "a\nb");
        assert_eq!(
            plain_text(b"nul\x00 bel\x07 tab\there"),
            "nul bel tab\there"
        );
    }

    #[test]
    fn the_tail_is_the_last_lines_and_bad_utf8_is_replaced() {
        let raw = b"one\r\ntwo\r\nthree\r\n\xffpanic: oops\r\n";
        assert_eq!(tail_text(raw, 2), "three\n\u{fffd}panic: oops");
        assert_eq!(tail_text(raw, 10), "one\ntwo\nthree\n\u{fffd}panic: oops");
        assert_eq!(tail_text(b"", 5), "");
    }
}
