//! `egressctl scrub`: remove secrets from stdin, write the result to stdout.
//!
//! Text mode streams stdin through [`scrub::StreamScrubber`] (bounded
//! memory: a hold-back window, never the whole input). `--json` parses one
//! JSON document and scrubs it value by value (strings and keys), keeping its
//! structure. Exit 0 on success; invalid JSON prints one line on stderr,
//! nothing on stdout, and exits 2; an I/O error exits 1.
//!
//! Must never: echo input it failed to scrub, or print a secret in an error.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use clap::Args as ClapArgs;

/// Largest JSON document accepted with `--json` (it is parsed whole).
const MAX_JSON_BYTES: u64 = 256 * 1024 * 1024;
/// Read size for text mode.
const CHUNK: usize = 64 * 1024;

/// Arguments of `egressctl scrub`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Read one JSON document and scrub it value by value (strings and keys),
    /// keeping its structure; the output is compact JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `egressctl scrub`.
pub fn run(args: &Args) -> ExitCode {
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    let result = if args.json {
        json_mode(stdin, stdout)
    } else {
        text_mode(stdin, stdout).map_err(Failure::Io)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            report(&format!("egressctl scrub: I/O error: {e}"));
            ExitCode::from(1)
        }
        Err(Failure::Json(msg)) => {
            report(&format!("egressctl scrub: invalid JSON on stdin: {msg}"));
            ExitCode::from(2)
        }
    }
}

enum Failure {
    Io(io::Error),
    Json(String),
}

fn report(line: &str) {
    let mut err = io::stderr().lock();
    // Nothing sensible to do if stderr is gone.
    let _ = writeln!(err, "{line}");
}

fn text_mode(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut stream = scrub::Scrubber::new().stream();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let out = stream.push_bytes(buf.get(..n).unwrap_or_default());
        output.write_all(out.as_bytes())?;
    }
    output.write_all(stream.flush().as_bytes())?;
    output.flush()
}

fn json_mode(input: impl Read, mut output: impl Write) -> Result<(), Failure> {
    let mut text = Vec::new();
    input
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(Failure::Io)?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(Failure::Json(format!(
            "document larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    // serde_json's messages give line and column, never the offending value.
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Failure::Json(e.to_string()))?;
    let scrubbed = scrub::scrub_json(&value);
    let mut rendered = serde_json::to_vec(&scrubbed).map_err(|e| Failure::Json(e.to_string()))?;
    rendered.push(b'\n');
    output.write_all(&rendered).map_err(Failure::Io)?;
    output.flush().map_err(Failure::Io)
}
