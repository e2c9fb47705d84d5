//! How every command reads a call's arguments (`ARGS`) and what it answers
//! when they are wrong: the same usage error (exit 2) from `exec`, `submit`,
//! `call` and `submit --batch`.
//!
//! `ARGS` is a JSON array given inline (`'[4, 5]'`), read from a file
//! (`@args.json`) or from standard input (`-`). Files and stdin are read up
//! to [`MAX_ARGS_READ`]; the limit the call must fit (the hosts'
//! `--max-args`) is checked by each command against what it knows of the
//! hosts ([`wasq_broker::Limits::misfit`]), with both sizes in the message.

use std::io::Read;
use std::path::Path;

use serde_json::value::RawValue;

use super::UsageError;

/// Most bytes read from an `@FILE` or stdin before giving up: far above any
/// host's args limit, so the message about that limit is the one people see.
pub const MAX_ARGS_READ: u64 = 256 * 1024 * 1024;

/// What `ARGS` means, for `--help`.
pub const ARGS_HELP: &str =
    "The arguments: a JSON array inline ('[4, 5]'), @FILE to read it from a file, or - for stdin";

/// Reads `spec` (inline JSON, `@FILE` or `-`) and checks it is a JSON array.
///
/// # Errors
/// A [`UsageError`] for an unreadable file, input over [`MAX_ARGS_READ`],
/// malformed JSON (with its line and column) or JSON that is not an array.
pub fn read_args(spec: &str) -> anyhow::Result<Box<RawValue>> {
    let (text, from) = if spec == "-" {
        (
            read_capped(std::io::stdin().lock(), "standard input")?,
            "ARGS (stdin)".to_string(),
        )
    } else if let Some(path) = spec.strip_prefix('@') {
        let file = std::fs::File::open(Path::new(path))
            .map_err(|e| UsageError(format!("cannot read ARGS from {path}: {e}")))?;
        (read_capped(file, path)?, format!("ARGS ({path})"))
    } else {
        (spec.to_string(), "ARGS".to_string())
    };
    parse_args(&text, &from)
}

/// Checks that `text` is a JSON array; `what` names it in the error
/// ("ARGS", "batch.jsonl: line 3").
///
/// # Errors
/// A [`UsageError`] saying what is wrong and where.
pub fn parse_args(text: &str, what: &str) -> anyhow::Result<Box<RawValue>> {
    let raw: Box<RawValue> = serde_json::from_str(text.trim())
        .map_err(|e| UsageError(format!("{what} is not valid JSON: {e}")))?;
    if !raw.get().starts_with('[') {
        let shown: String = raw.get().chars().take(40).collect();
        return Err(UsageError(format!(
            "{what} must be a JSON array, like '[4, 5]'; got {shown}"
        ))
        .into());
    }
    Ok(raw)
}

fn read_capped(reader: impl Read, name: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_ARGS_READ + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UsageError(format!("cannot read ARGS from {name}: {e}")))?;
    if bytes.len() as u64 > MAX_ARGS_READ {
        return Err(UsageError(format!(
            "ARGS from {name} are over {MAX_ARGS_READ} bytes; no host accepts that much"
        ))
        .into());
    }
    String::from_utf8(bytes)
        .map_err(|e| UsageError(format!("ARGS from {name} are not UTF-8: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(r: anyhow::Result<Box<RawValue>>) -> String {
        let e = r.unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
        e.to_string()
    }

    #[test]
    fn inline_args_must_be_one_json_array() {
        assert_eq!(read_args(" [4, 5] ").unwrap().get(), "[4, 5]");
        let bad = usage(read_args("[4, 5"));
        assert!(bad.starts_with("ARGS is not valid JSON"), "{bad}");
        assert!(bad.contains("line 1 column 5"), "{bad}");
        let object = usage(read_args(r#"{"a": 1}"#));
        assert!(object.contains("must be a JSON array"), "{object}");
    }

    #[test]
    fn args_come_from_a_file_with_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("args.json");
        std::fs::write(&path, "[\"from a file\"]\n").unwrap();
        let spec = format!("@{}", path.display());
        assert_eq!(read_args(&spec).unwrap().get(), "[\"from a file\"]");
        std::fs::write(&path, "[1,\n 2,\n oops]").unwrap();
        let bad = usage(read_args(&spec));
        assert!(bad.contains(&path.display().to_string()), "{bad}");
        assert!(bad.contains("line 3"), "{bad}");
        let missing = usage(read_args("@/nonexistent/args.json"));
        assert!(
            missing.contains("cannot read ARGS from /nonexistent/args.json"),
            "{missing}"
        );
    }
}
