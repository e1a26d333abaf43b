//! Reading the passphrase: from a file, the environment, or the terminal
//! without echo.

use std::path::Path;

use zeroize::Zeroizing;

use super::CliError;
use crate::crypto::Passphrase;

/// Environment variable that scripts may set instead of a terminal prompt.
pub const PASSPHRASE_VARIABLE: &str = "SYN_PASSPHRASE";

fn from_file(path: &Path) -> Result<Passphrase, CliError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
        CliError::new(format!(
            "cannot read the passphrase file {}: {error}",
            path.display()
        ))
    })?);
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(Passphrase::new(line.to_string()))
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

fn prompt(text: &str) -> Result<Passphrase, CliError> {
    let answer = rpassword::prompt_password(text).map_err(|error| {
        CliError::new(format!(
            "cannot read the passphrase from the terminal: {error}"
        ))
    })?;
    Ok(Passphrase::new(answer))
}

/// Reads the passphrase of an existing vault.
pub fn read(file: Option<&Path>) -> Result<Passphrase, CliError> {
    let passphrase = read_any(file, false)?;
    if passphrase.is_empty() {
        return Err(CliError::new("the passphrase is empty"));
    }
    Ok(passphrase)
}

/// Reads the passphrase of a new vault, twice when typed at a terminal.
pub fn read_new(file: Option<&Path>) -> Result<Passphrase, CliError> {
    let passphrase = read_any(file, true)?;
    if passphrase.is_empty() {
        return Err(CliError::new("the passphrase is empty: choose a long one"));
    }
    Ok(passphrase)
}

fn read_any(file: Option<&Path>, confirm: bool) -> Result<Passphrase, CliError> {
    if let Some(path) = file {
        return from_file(path);
    }
    if let Ok(value) = std::env::var(PASSPHRASE_VARIABLE) {
        return Ok(Passphrase::new(value));
    }
    if !stdin_is_terminal() {
        return Err(CliError::new(format!(
            "no passphrase given: type it at a terminal, or pass --passphrase-file FILE, or set {PASSPHRASE_VARIABLE}"
        )));
    }
    let first = prompt("Passphrase: ")?;
    if confirm {
        let second = prompt("Repeat the passphrase: ")?;
        if first.expose() != second.expose() {
            return Err(CliError::new(
                "the two passphrases differ; nothing was created",
            ));
        }
    }
    Ok(first)
}
